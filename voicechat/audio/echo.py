"""Echo cancellation: the assistant's own voice taken out of the microphone, so that on open
speakers the user can interrupt a reply by speaking and the reply does not interrupt itself.

The player hands every block it sends to the device to :class:`PlayedAudio`, stamped with the
time it was sent; the listener hands every microphone block to :class:`EchoCanceller`, stamped
with the time it arrived. The canceller lays the played audio on a 16 kHz timeline by those
stamps and pairs each microphone sample with the far-end sample sent at the moment the microphone
sample arrived. A sound cannot be heard before it is sent, nor arrive before it is captured, so
the reference leads its echo as long as stamps are never taken for later than they are: a stream's
samples follow on from its previous block, and move earlier when a block's stamp says so, but
later only after a gap: for the speaker, a block sent later than the audio the device held ahead
(it ran dry meanwhile; a stamp late by less is no gap), for the microphone ``GAP_S`` (the player
reports the silence between replies too). The newest microphone samples wait, up to ``WAIT_S``,
for the speaker's next block rather than be paired with silence that was never played. Then the
reference always leads; by how much (the output and input latencies the devices
report, plus the room or a sound server's buffering) is given to WebRTC's AEC3 as the stream
delay, and its own delay estimator finds the rest.

AEC3 comes from pywebrtc-audio, chosen over livekit's AudioProcessingModule by
scripts/bench_aec.py: fewer false barge-ins and quicker true ones on a live loopback, the user's
speech better kept over the echo, less CPU per frame, and a 0.4 MB wheel instead of 12 MB (both
Apache-2.0; webrtc-apm has Windows wheels only). Without it, :func:`load_echo_canceller` says so
in one line and the conversation stays half-duplex.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Protocol

import numpy as np

from voicechat.audio.double_talk import NearEndDetector
from voicechat.audio.resample import MODEL_RATE, StreamResampler

if TYPE_CHECKING:
    from voicechat.audio.player import Player

FRAME = MODEL_RATE // 100  # AEC3 works on 10 ms frames
TIMELINE_S = 4.0  # played audio kept for pairing; far more than any device latency
GAP_S = 0.5  # a block stamped this much later than where the previous one ended starts anew ...
MIN_BUFFERED_S = 0.02  # ... or, on the speaker's side, later than the device's buffer (at least this) ...
SLACK_S = 0.01  # ... plus this
WAIT_S = 0.2  # microphone audio waits at most this long for the played audio it is paired with


class Apm(Protocol):
    """An acoustic echo canceller: near (microphone) and far (played) int16 audio at 16 kHz, the
    same whole number of 10 ms frames, frame by frame in order."""

    stream_delay_ms: int

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...


class PlayedAudio:
    """What the player sent to the device, silence between replies included, so that the timeline
    keeps up with the speaker. :meth:`add` runs in the audio callback: it only queues."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[float, np.ndarray, int, float]] = queue.SimpleQueue()

    def add(self, t_sent: float, samples: np.ndarray, rate: int, output_delay_s: float) -> None:
        """``samples`` (mono float32, a copy) were handed to the device at ``t_sent`` (monotonic)
        and are heard ``output_delay_s`` later, as the device reports."""
        self._queue.put((t_sent, samples, rate, output_delay_s))

    def take(self) -> list[tuple[float, np.ndarray, int, float]]:
        blocks = []
        while True:
            try:
                blocks.append(self._queue.get_nowait())
            except queue.Empty:
                return blocks


class FarEndTimeline:
    """Played audio at 16 kHz on the clock of when it was sent: sample ``i`` was sent at time
    ``i / 16000``. Silence where nothing was played, and before and after what is kept."""

    def __init__(self, seconds: float = TIMELINE_S) -> None:
        self._ring = np.zeros(int(seconds * MODEL_RATE), dtype=np.float32)
        self._end: int | None = None  # the index after the last sample written
        self._resamplers: dict[int, StreamResampler] = {}

    def write(self, t_sent: float, samples: np.ndarray, rate: int, buffered_s: float = GAP_S) -> bool:
        """Lay a block on the timeline; True when it starts anew at its stamp. ``buffered_s``: how
        much audio the device holds ahead of what it plays: a block sent later than that after
        the previous one ended was preceded by silence (the device ran dry), not played on from it."""
        if rate not in self._resamplers:
            self._resamplers[rate] = StreamResampler(rate, MODEL_RATE)
        resampler = self._resamplers[rate]
        audio = resampler.process(samples)
        stamped = round(t_sent * MODEL_RATE)
        anew = self._end is None or stamped - self._end > buffered_s * MODEL_RATE
        if anew and self._end is not None and stamped - self._end < self._ring.size:
            self._put(self._end, np.zeros(stamped - self._end, np.float32))  # a pause between replies
        if anew or stamped < self._end:
            self._end = stamped
        self._put(self._end, audio)
        self._end += audio.size
        return anew

    @property
    def end(self) -> int | None:
        """The index after the last sample laid on the timeline; None before the first."""
        return self._end

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start`` .. ``start + count`` (zeros for any not kept)."""
        out = np.zeros(count, dtype=np.float32)
        if self._end is None:
            return out
        first = max(start, self._end - self._ring.size)
        last = min(start + count, self._end)
        if first < last:
            out[first - start:last - start] = self._ring[np.arange(first, last) % self._ring.size]
        return out

    def _put(self, start: int, audio: np.ndarray) -> None:
        audio = audio[-self._ring.size:]
        self._ring[np.arange(start, start + audio.size) % self._ring.size] = audio


class Convergence:
    """Whether AEC3 has learnt the echo path, judged from 10 ms frames while the far end plays: a
    frame is clean when the output is ``CLEAN_DB`` below the microphone, or quiet anyway (no echo
    reaches the microphone, as with headphones). Latched once ``CLEAN_SHARE`` of the last
    ``FRAMES`` such frames were clean: the filter is kept from then on. Until then, and for ever
    if it never learns (an echo path it cannot model), the listener stays half-duplex."""

    CLEAN_DB = 10.0
    QUIET = 32768 * 10 ** (-55 / 20)  # RMS of int16 samples at -55 dBFS
    PLAYING = 32768 * 10 ** (-50 / 20)
    FRAMES = 100  # 1 s of the far end playing
    CLEAN_SHARE = 0.8

    def __init__(self) -> None:
        self.converged = False
        self._clean: list[bool] = []

    def update(self, near: np.ndarray, far: np.ndarray, out: np.ndarray) -> None:
        if self.converged:
            return
        for start in range(0, near.size, FRAME):
            if _rms(far[start:start + FRAME]) < self.PLAYING:
                continue
            heard, left = _rms(near[start:start + FRAME]), _rms(out[start:start + FRAME])
            self._clean.append(left < max(heard * 10 ** (-self.CLEAN_DB / 20), self.QUIET))
        self._clean = self._clean[-self.FRAMES:]
        self.converged = len(self._clean) == self.FRAMES and sum(self._clean) >= self.CLEAN_SHARE * self.FRAMES


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


class EchoCanceller:
    """``cleaned, t_end = canceller.process(block, t_end)`` for each 16 kHz int16 microphone block
    in order (``t_end``: when its last sample arrived). The output holds whole 10 ms frames; up to
    one frame waits for the next block, and the returned ``t_end`` is that of its last sample.
    :attr:`converged` says when the echo is reliably removed; :attr:`near_end` whether the user
    speaks over the reply."""

    def __init__(self, apm: Apm, played: PlayedAudio, input_latency_s: float = 0.0) -> None:
        self.apm = apm
        self.played = played
        self.input_latency_s = input_latency_s  # the microphone's reported latency
        self.timeline = FarEndTimeline()
        self._next: int | None = None  # the timeline index of the next microphone sample
        self._pending = np.zeros(0, dtype=np.int16)
        self.convergence = Convergence()
        self.near_end = NearEndDetector()

    @property
    def converged(self) -> bool:
        """AEC3 removes the echo reliably, and the double-talk detector has learnt it: from then on
        the user can interrupt by voice (until then, bursts of echo could pass for the user)."""
        return self.convergence.converged and self.near_end.ready

    def process(self, samples: np.ndarray, t_end: float) -> tuple[np.ndarray, float]:
        for t_sent, audio, rate, delay in self.played.take():
            if self.timeline.write(t_sent, audio, rate, buffered_s=max(delay, MIN_BUFFERED_S) + SLACK_S):
                self._set_delay(delay)
        stamped = round(t_end * MODEL_RATE) - samples.size
        following = None if self._next is None else self._next + self._pending.size
        if following is None or stamped - following > GAP_S * MODEL_RATE:
            self._next, self._pending = stamped, np.zeros(0, dtype=np.int16)  # the first block, or samples lost
        elif stamped < following:
            self._next = stamped - self._pending.size  # it arrived sooner than the blocks before said
        near = np.concatenate([self._pending, samples]) if self._pending.size else samples
        ready = self._ready(near.size)
        whole = ready - ready % FRAME
        self._pending = near[whole:].copy()
        start, self._next = self._next, self._next + whole
        if not whole:
            return near[:0], t_end - self._pending.size / MODEL_RATE
        far = self.timeline.read(start, whole)
        far = np.clip(np.round(far * 32768.0), -32768, 32767).astype(np.int16)
        cleaned = self.apm.process(near[:whole], far)
        self.convergence.update(near[:whole], far, cleaned)
        self.near_end.push(near[:whole], far)
        return cleaned, t_end - self._pending.size / MODEL_RATE

    def _ready(self, count: int) -> int:
        """How many of the ``count`` samples from ``_next`` on have their played audio on the
        timeline: the microphone's newest samples wait for the speaker's next block, unless the
        speaker has fallen silent for good (closed, or gone)."""
        known = self.timeline.end
        if known is None or known - self._next >= count or count - (known - self._next) > WAIT_S * MODEL_RATE:
            return count
        return max(0, known - self._next)

    def _set_delay(self, output_delay_s: float) -> None:
        """The echo's delay behind the reference as the devices report it, once per stretch of
        played audio: a hint that changed with every block's jitter would unsettle AEC3."""
        self.apm.stream_delay_ms = round((output_delay_s + self.input_latency_s) * 1000)


def webrtc_aec3() -> Apm:
    """WebRTC's AEC3 at 16 kHz mono (with its high-pass filter). Raises ImportError when
    pywebrtc-audio is not installed."""
    from pywebrtc_audio import EchoCanceller as Aec3

    return Aec3(sample_rate=MODEL_RATE, num_channels=1)


UNAVAILABLE = ("echo cancellation is not available ({why}): the microphone is ignored while the "
               "assistant speaks; with headphones, set audio.barge_in: true to interrupt by voice")


def load_echo_canceller(enabled: bool, player: Player | None) -> tuple[EchoCanceller | None, str | None]:
    """For ``audio.echo_cancellation: true`` and an open speaker: the canceller, fed by what the
    player sends from now on, or None and one line saying why the conversation stays half-duplex."""
    if not enabled or player is None:
        return None, None
    try:
        apm = webrtc_aec3()
    except ImportError as error:
        return None, UNAVAILABLE.format(why=f"pywebrtc-audio: {error}; reinstall voicechat")
    player.played = PlayedAudio()
    return EchoCanceller(apm, player.played), None


def canceller_status() -> tuple[bool, str]:
    """For `voicechat doctor`: whether AEC3 can be loaded, and what it is."""
    try:
        from importlib.metadata import version

        webrtc_aec3()
    except Exception as error:  # noqa: BLE001 - an unusable wheel is reported, whatever broke
        return False, f"pywebrtc-audio not usable ({type(error).__name__}: {error})"
    return True, f"WebRTC AEC3 (pywebrtc-audio {version('pywebrtc-audio')})"
