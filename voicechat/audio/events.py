"""What the audio layer tells the conversation engine. Every event carries ``t``, a time on the
monotonic clock (``time.monotonic()``) when the audio comes from a live device, or seconds from
the start of the recording when it comes from a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class SpeechStarted:
    """The endpointer decided that the user is speaking."""

    t: float  # when the decision was made
    start: float  # estimated start of speech (before the decision by the start trigger)


@dataclass(frozen=True)
class Level:
    """Loudness of the last few tens of milliseconds, for meters."""

    t: float
    dbfs: float
    noise_floor_dbfs: float
    speech: bool  # the last frame counted as speech
    speaking: bool  # an utterance is in progress


@dataclass(frozen=True, eq=False)
class UtteranceEnded:
    """One complete utterance: 16 kHz mono int16 audio from the pre-roll to a short tail."""

    t: float  # when the end was decided
    start: float  # estimated start of speech
    end: float  # estimated end of speech (end of the last speech frame)
    audio: np.ndarray = field(repr=False)
    audio_start: float  # time of the first sample in ``audio``
    reason: Literal["silence", "max_length", "stream_end"] = "silence"
    rate: int = 16000

    @property
    def decision_delay(self) -> float:
        """Seconds from the estimated end of speech to the decision."""
        return self.t - self.end

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class UtteranceDiscarded:
    """Speech that started but was shorter than the minimum utterance (a cough, a click)."""

    t: float
    start: float
    end: float


@dataclass(frozen=True)
class Interrupted:
    """The assistant's playback was cut: the user spoke over it (barge-in) or pressed a key."""

    t: float
    played_s: float  # seconds of the reply the user had heard
    by: Literal["speech", "key"]


@dataclass(frozen=True)
class DeviceFailed:
    """An audio device could not be used or stopped working; listening has stopped."""

    t: float
    message: str


AudioEvent = SpeechStarted | Level | UtteranceEnded | UtteranceDiscarded | Interrupted | DeviceFailed
