"""The C library's memory allocator in a process that runs for long (glibc only).

glibc gives an allocation above its mmap threshold a mapping of its own, returned to the system
when it is freed. But each such buffer freed raises the threshold to its size (up to 32 MiB), so
that later buffers up to that size come from the heap. In a conversation, buffers that grow with
its context (the language model's attention over a longer history each turn) then leave holes in
the heap that the next, larger ones do not fit: the resident memory of a conversation on the tiny
models grew by about 1 MiB per turn (scripts/bench_soak.py). A fixed threshold keeps the buffers
above it in their own mappings. Only the commands that run for long (chat, eval, serve) fix it: a
mapping costs page faults each time it is made, which one-shot commands need not pay.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LONG_RUNNING_MMAP_THRESHOLD = 4 * 2**20  # buffers above 4 MiB get mappings of their own


def keep_large_buffers_out_of_the_heap() -> bool:
    """Fixes the mmap threshold for the rest of the process; False where the C library has no
    glibc ``mallopt`` (then nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, LONG_RUNNING_MMAP_THRESHOLD) == 1
