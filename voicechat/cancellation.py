"""Cancellation points: where long model work stops once the user has cancelled it.

The turn's cancel event (one ``threading.Event``, see voicechat.engine) is passed down to the
work, which checks it between its steps: 30 s windows of the speech tokenizer, segments of a
speech embedding, Whisper's windows, the layers of our own models. Inside one forward pass of a
model whose code is not ours (SONAR's w2v-BERT, Whisper), ``stop_between_layers`` adds the checks
once, when the model is loaded: before each of its layers, the model checks the event that the
calling thread is working for, which ``working_for(cancel)`` sets around the call. Models run
outside ``working_for`` are not slowed or stopped.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

_thread = threading.local()


class Cancelled(Exception):
    """The work was cancelled at one of its cancellation points; it has produced nothing."""


def check(cancel: threading.Event | None) -> None:
    """A cancellation point: raises Cancelled once ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled


@contextmanager
def working_for(cancel: threading.Event | None) -> Iterator[None]:
    """Within: the layers of models prepared by ``stop_between_layers`` are cancellation points
    for ``cancel``, in the calling thread only."""
    check(cancel)
    outer = getattr(_thread, "cancel", None)
    _thread.cancel = cancel
    try:
        yield
    finally:
        _thread.cancel = outer


def stop_between_layers(model: Any) -> None:
    """Makes every layer of ``model`` (each module of its ModuleLists: transformer and conformer
    blocks) a cancellation point for the work of ``working_for``."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for layer in module:
                layer.register_forward_pre_hook(_check_this_thread)


def _check_this_thread(module: Any, args: Any) -> None:
    check(getattr(_thread, "cancel", None))
