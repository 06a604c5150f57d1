"""A cancel event for tests of cancellation points: the user cancels part-way through the work."""

from __future__ import annotations

import threading


class CancelledAfterChecks(threading.Event):
    """Test double for a turn's cancel event: it is set by the time the work checks it for the
    ``checks + 1``-th time, as if the user cancelled just then."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks
        self.checked = 0

    def is_set(self) -> bool:
        self.checked += 1
        if self.checked > self.checks:
            self.set()
        return super().is_set()
