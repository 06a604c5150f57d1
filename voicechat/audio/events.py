"""What the audio layer tells the conversation. Every event carries ``t`` (from the common event
base), a time on the monotonic clock (``time.monotonic()``) when the audio comes from a live
device, or seconds from the start of the recording when it comes from a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.events import Event


@dataclass(frozen=True)
class SpeechStarted(Event):
    """The endpointer decided that the user is speaking."""

    start: float  # estimated start of speech (before the decision by the start trigger)


@dataclass(frozen=True)
class Level(Event):
    """Loudness of the last few tens of milliseconds, for meters."""

    dbfs: float
    noise_floor_dbfs: float
    speech: bool  # the last frame counted as speech
    speaking: bool  # an utterance is in progress
    turn_probability: float | None = None  # the end-of-turn model's last answer (audio.turn: smart)


@dataclass(frozen=True, eq=False)
class UtteranceEnded(Event):
    """One complete utterance: 16 kHz mono int16 audio from the pre-roll to a short tail."""

    start: float  # estimated start of speech
    end: float  # estimated end of speech (end of the last speech frame)
    audio: np.ndarray = field(repr=False)
    audio_start: float  # time of the first sample in ``audio``
    reason: Literal["silence", "complete", "max_length", "stream_end"] = "silence"  # complete: the turn model
    rate: int = MODEL_RATE
    model_s: float = 0.0  # the end-of-turn model's compute time that is part of ``t`` (reason complete)

    @property
    def decision_delay(self) -> float:
        """Seconds from the estimated end of speech to the decision."""
        return self.t - self.end

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, eq=False)
class Paused(Event):
    """Silence after speech inside an utterance that may go on: ``audio`` is the utterance so far,
    exactly what UtteranceEnded will carry if no speech follows (work on it may start now)."""

    start: float  # estimated start of speech
    end: float  # estimated end of speech so far
    audio: np.ndarray = field(repr=False)
    audio_start: float


@dataclass(frozen=True)
class Resumed(Event):
    """Speech again after a pause: the utterance goes on, what was paused on is not the question."""


@dataclass(frozen=True)
class UtteranceDiscarded(Event):
    """Speech that started but was shorter than the minimum utterance (a cough, a click)."""

    start: float
    end: float


@dataclass(frozen=True)
class Interrupted(Event):
    """The assistant's playback was cut: the user spoke over it (barge-in) or pressed a key."""

    played_s: float  # seconds of the reply the user had heard
    by: Literal["speech", "key"]


@dataclass(frozen=True)
class DeviceFailed(Event):
    """An audio device could not be used or stopped working; listening has stopped."""

    message: str


AudioEvent = (SpeechStarted | Level | Paused | Resumed | UtteranceEnded | UtteranceDiscarded | Interrupted
              | DeviceFailed)
