"""Worker threads are waited for even when Ctrl-C cuts the wait."""

from __future__ import annotations

import threading

import pytest

from voicechat.worker import Worker


class CutByCtrlC(threading.Event):
    """Test double for the worker's finished event: the first ``cuts`` waits end in a Ctrl-C."""

    def __init__(self, cuts: int) -> None:
        super().__init__()
        self.cuts = cuts

    def wait(self, timeout: float | None = None) -> bool:
        if self.cuts:
            self.cuts -= 1
            raise KeyboardInterrupt
        return super().wait(timeout)


def runs_until_cancelled(cancel: threading.Event, stopped: list[str], cuts: int) -> Worker:
    def work() -> None:
        cancel.wait()
        stopped.append("stopped")

    worker = Worker(work, "test-worker", cancel)
    worker.finished = CutByCtrlC(cuts)
    return worker


def test_worker_joins_when_its_work_ends() -> None:
    done = []
    worker = Worker(lambda: done.append(1), "test-worker", threading.Event())
    worker.start()
    worker.join()
    assert done == [1] and not worker.cancel.is_set()


@pytest.mark.parametrize("cuts", [1, 2])
def test_ctrl_c_while_waiting_cancels_the_work_and_still_waits_for_it(cuts: int) -> None:
    cancel, stopped = threading.Event(), []
    worker = runs_until_cancelled(cancel, stopped, cuts)
    worker.start()
    with pytest.raises(KeyboardInterrupt):
        worker.join()
    assert cancel.is_set()
    assert stopped == ["stopped"]  # the work had ended before the interruption was passed on
