"""A turn started before its question was confirmed (preemptive work, in the user's pause).

The engine runs such a turn like any other, but what it would show and play goes through a
:class:`Hold`: its events and speaker calls wait in order until the question is confirmed
(:meth:`Hold.release`: they go out at once, and later ones pass straight through) or the user goes
on speaking (:meth:`Hold.drop`: they are forgotten). The reply's first audio waits in the hold too,
and the decoder with it, so no more is decoded for a question that may not be the one asked. The
conversation (voicechat.session) decides; the engine only knows that a turn may be held.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from voicechat.errors import VoicechatError


class Hold:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: list[Callable[[], None]] = []
        self._decided = threading.Event()
        self.audio_ready = threading.Event()  # the reply's first audio is waiting in the hold
        self.audio_ready_at: float | None = None  # since when
        self.released = False
        self.confirmed_at: float | None = None  # monotonic time of the release
        self._on_drop: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        return not self._decided.is_set()

    @property
    def dropped(self) -> bool:
        return self._decided.is_set() and not self.released

    def run(self, action: Callable[[], None]) -> None:
        """Does ``action`` now if released, keeps it while undecided, forgets it if dropped."""
        with self._lock:
            if self.pending:
                self._kept.append(action)
                return
        if self.released:
            action()

    def release(self) -> None:
        """The question is confirmed: what was kept happens now, in order, and nothing waits."""
        with self._lock:
            if not self.pending:
                return
            self.confirmed_at = time.monotonic()
            kept, self._kept = self._kept, []
            for action in kept:
                action()
            self.released = True
            self._decided.set()

    def drop(self) -> None:
        """The user went on: what was kept is forgotten, and so is anything the turn does later;
        the turn is told to stop (see :meth:`on_drop`)."""
        with self._lock:
            if not self.pending:
                return
            self._kept = []
            self._decided.set()
            stop = self._on_drop
        if stop is not None:
            stop()

    def on_drop(self, stop: Callable[[], None]) -> None:
        """The turn working for this hold: ``stop()`` runs when it is dropped (now, if it was)."""
        with self._lock:
            self._on_drop = stop
            dropped = self.dropped
        if dropped:
            stop()

    def wait(self) -> bool:
        """Waits for the decision; True when the turn was released."""
        self._decided.wait()
        return self.released


def run_or_hold(hold: Hold | None, action: Callable[[], None]) -> None:
    """Runs ``action`` now when the turn is not held, else when its hold is released."""
    if hold is None:
        action()
    else:
        hold.run(action)


class HeldSpeaker:
    """The engine's speaker for a held turn: calls wait in the hold; the first audio pushed waits
    there with the decoder until the decision. A device error met when the kept calls are made
    (on the thread that released them) is raised to the decoder, as it would have been."""

    def __init__(self, speaker, hold: Hold) -> None:
        self.speaker = speaker
        self.hold = hold
        self._error: VoicechatError | None = None

    def _kept(self, call: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                call()
            except VoicechatError as error:
                self._error = self._error or error
        return run

    def begin(self) -> None:
        self.hold.run(self._kept(self.speaker.begin))

    def push(self, audio: np.ndarray) -> bool:
        if not self.hold.pending:
            return self.hold.released and self.speaker.push(audio)
        if self.hold.audio_ready_at is None:
            self.hold.audio_ready_at = time.monotonic()
        self.hold.run(self._kept(lambda: self.speaker.push(audio)))
        self.hold.audio_ready.set()
        released = self.hold.wait()
        if released and self._error is not None:
            raise self._error
        return released

    def end(self) -> None:
        self.hold.run(self._kept(self.speaker.end))

    def flush(self) -> None:
        self.hold.run(self._kept(self.speaker.flush))

    @property
    def played_s(self) -> float:
        return self.speaker.played_s

    @property
    def underruns(self) -> int:
        return self.speaker.underruns

    @property
    def first_audio_at(self) -> float | None:
        return self.speaker.first_audio_at
