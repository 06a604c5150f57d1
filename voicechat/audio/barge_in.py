"""Barge-in on open speakers: is the speech the endpointer just started while the assistant speaks
the user's voice, or the assistant's own echo that the canceller let through?

AEC3 removes the echo 20-30 dB deep once it has learnt the room, but when its filter readjusts it
lets bursts of the reply through, voiced and loud enough for webrtcvad above the noise floor, some
for a second; each would cut the reply. What these bursts are not is speech to Silero VAD: the
canceller's suppressor leaves them thin and choppy, and Silero (trained on real voices) scores them
near zero, while a voice in the room reaches the cleaned audio whole wherever the echo pauses.

So while the assistant speaks, a speech start is a candidate: it interrupts the reply once Silero,
listening to the cleaned audio, hears speech (probability of at least ``THRESHOLD``) in a step that
ends after the start was decided. A candidate that ends first is dropped: it never becomes a
question. Chosen by scripts/bench_aec.py on the live PulseAudio loopback, from the trade-off
between false barge-ins per minute of the assistant speaking and the questions spoken over it at
0 and -5 dB that interrupt, and how soon.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.audio.turn import SILERO_WINDOW, SileroVad
from voicechat.errors import ModelError

THRESHOLD = 0.5  # Silero's speech probability that confirms a candidate (its usual onset)
STEP_S = SILERO_WINDOW / MODEL_RATE
KEPT_STEPS = 256  # ~8 s of Silero's answers, far longer than any candidate waits


class BargeInJudge:
    """``judge.push(cleaned)`` with every block of cleaned int16 audio the endpointer hears;
    ``judge.speech_after(t)`` says whether Silero heard speech in a step ending after ``t`` (the
    endpointer's clock: :meth:`restart` gives the time of the next sample pushed)."""

    def __init__(self, silero: SileroVad, threshold: float = THRESHOLD) -> None:
        self.silero = silero
        self.threshold = threshold
        self._steps: deque[tuple[float, float]] = deque(maxlen=KEPT_STEPS)  # (end time, probability)
        self._pushed = 0
        self._origin = 0.0

    def restart(self, origin: float) -> None:
        """A new stream (the microphone opened) whose first sample is at ``origin``."""
        self.silero.reset()
        self._steps.clear()
        self._pushed, self._origin = 0, origin

    def push(self, cleaned: np.ndarray) -> None:
        steps = self.silero.push(cleaned.astype(np.float32) / 32768.0)
        done = self._pushed // SILERO_WINDOW  # steps answered before these
        for offset, probability in enumerate(steps, start=1):
            self._steps.append((self._origin + (done + offset) * STEP_S, probability))
        self._pushed += cleaned.size

    def speech_after(self, t: float) -> bool:
        return any(end > t and probability >= self.threshold for end, probability in self._steps)


def load_barge_in_judge() -> tuple[BargeInJudge | None, str | None]:
    """The judge for a conversation whose echo is cancelled, or None and one line saying that
    speech during the reply interrupts it without Silero's confirmation."""
    try:
        return BargeInJudge(SileroVad.load()), None
    except ModelError as error:
        return None, f"{error}; the assistant's own echo may interrupt it now and then"
