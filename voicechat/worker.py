"""A thread that runs model code (generation, speech decoding) and is always waited for.

Such a thread must not outlive the command: when the interpreter exits while a daemon thread is
inside torch, the process aborts ("terminate called without an active exception"). Thread.join()
cannot be relied on after a Ctrl-C: a join interrupted by KeyboardInterrupt marks the thread as
stopped although it still runs, so a second join returns at once. A Worker is waited for through
its own event instead, and a Ctrl-C during the wait cancels the work and keeps waiting.
"""

from __future__ import annotations

import threading
from typing import Callable


class Worker:
    def __init__(self, target: Callable[[], None], name: str, cancel: threading.Event) -> None:
        self.cancel = cancel  # set on Ctrl-C during join(); the target must check it
        self.finished = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """Waits until the target has returned. A Ctrl-C meanwhile sets ``cancel``; the wait goes
        on (also through further Ctrl-Cs, at most one step of the work) and then the first
        KeyboardInterrupt is raised."""
        interrupted: KeyboardInterrupt | None = None
        while True:
            try:
                self.finished.wait()
                break
            except KeyboardInterrupt as error:
                self.cancel.set()
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self.finished.set()
