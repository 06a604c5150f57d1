"""Barge-in on open speakers: is the speech the endpointer just started while the assistant speaks
the user's voice, or the assistant's own echo that the canceller let through?

AEC3 removes the echo 20-30 dB deep once it has learnt the room, but when its filter readjusts (or
the pairing with the played audio slips on a loaded machine) it lets bursts of the reply through,
voiced and loud enough for webrtcvad above the noise floor, some for a second; each would cut the
reply. Silero VAD scores most of them lower than a voice in the room: the canceller's suppressor
leaves them thin and choppy, while the user's voice reaches the cleaned audio whole wherever the
echo pauses.

So while the assistant speaks, a speech start is a candidate: it interrupts the reply once Silero,
listening to the cleaned audio, hears speech (probability of at least ``THRESHOLD`` in ``STEPS``
consecutive 32 ms steps, the last ending after the start was decided). A candidate that ends first
is dropped: it never becomes a question.

Chosen by scripts/bench_aec.py --barge-in on the live PulseAudio loopback (the trade-off between
false barge-ins per minute of the assistant speaking and the questions spoken over it at 0 and
-5 dB that interrupt, and how soon). A strict threshold removes most false barge-ins but not all:
some bursts pass the echo through almost unchanged, and they are speech to Silero too. Those are
told apart with the played audio itself (voicechat/audio/double_talk.py): the burst follows it,
the user does not.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.audio.turn import SILERO_WINDOW, SileroVad
from voicechat.errors import ModelError

THRESHOLD = 0.9  # Silero's speech probability that confirms a candidate
STEPS = 1  # consecutive 32 ms steps at or above it
STEP_S = SILERO_WINDOW / MODEL_RATE
KEPT_STEPS = 256  # ~8 s of Silero's answers, far longer than any candidate waits


class BargeInJudge:
    """``judge.push(cleaned)`` with every block of cleaned int16 audio the endpointer hears;
    ``judge.speech_after(t)`` says whether Silero heard speech in ``steps`` consecutive steps, the
    last ending after ``t`` (the endpointer's clock: :meth:`restart` gives the time of the next
    sample pushed)."""

    def __init__(self, silero: SileroVad, threshold: float = THRESHOLD, steps: int = STEPS) -> None:
        self.silero = silero
        self.threshold = threshold
        self.steps = steps
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
        run = 0
        for end, probability in self._steps:
            run = run + 1 if probability >= self.threshold else 0
            if run >= self.steps and end > t:
                return True
        return False


def load_barge_in_judge() -> tuple[BargeInJudge | None, str | None]:
    """The judge for a conversation whose echo is cancelled, or None and one line saying that
    speech during the reply interrupts it without Silero's confirmation."""
    try:
        return BargeInJudge(SileroVad.load()), None
    except ModelError as error:
        return None, f"{error}; the assistant's own echo may interrupt it now and then"
