"""Double-talk detection: is the user speaking while the assistant's reply plays?

The canceller (AEC3) answers this badly on its own: where echo and voice overlap its suppressor
takes the voice out with the echo, so a question spoken over the reply reaches the cleaned audio
only in the reply's pauses; and when its filter readjusts it lets bursts of the reply through that
sound like a voice. Both are settled by looking at the microphone next to what was played.

The echo is what was played, delayed and coloured by the room. :class:`NearEndDetector` finds the
delay (GCC-PHAT between the microphone and the played audio, while the reply plays alone), learns
per band how loud the echo is (the echo path's gain over 24 bands of 150-4000 Hz), and predicts from
the played audio the echo's power in each band of each 10 ms frame, taking the loudest of the frames
around the delay and letting it fade as the room's reverberation does (the fading of ``TAILS``
that predicts the reply alone most tightly, chosen once the gains are learnt, with the margin the
reply alone never exceeded, plus a guard). A frame in which the microphone is that margin above the
prediction in at least ``SHARE`` of its audible bands holds something the reply does not explain:
the user. ``FRAMES`` such frames in a row, while the echo is expected,
mean the user speaks over the reply. Frames in which the reply is not expected to be heard (its
pauses) say nothing: there the cleaned audio is the microphone, and the endpointer hears the user.

Thresholds chosen by scripts/bench_aec.py --barge-in on the live echo path, and checked on a
reverberant room in tests/test_double_talk.py.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voicechat.audio.resample import MODEL_RATE

FRAME = MODEL_RATE // 100  # 10 ms
FFT = 512
BAND_EDGES_HZ = np.geomspace(150, 4000, 25)
SHARE = 0.3  # of the audible bands in a frame above the predicted echo by the margin: not the echo
MIN_MARGIN_DB = 6.0  # the margin, at least
GUARD_DB = 3.0  # above the most the reply alone exceeded its prediction by
FRAMES = 2  # consecutive frames: the user speaks
AUDIBLE = 1e-8  # a band's power (full scale 1) counted as sound: -80 dB
ECHO_EXPECTED = 1e-6  # the predicted echo's power over all bands that makes a frame count: -60 dB
SILENCE = 1e-10  # played audio below this (all bands, -100 dB) is silence
MAX_DELAY_S = 0.5  # the longest echo delay looked for
DELAY_WINDOW_S = 2.0  # of audio over which the delay is found
DELAY_EVERY = 50  # frames between delay estimates
DELAY_PEAK = 6.0  # GCC-PHAT's peak over its mean absolute value that makes the delay trusted
JITTER = 1  # frames either side of the delay taken into the prediction
TAILS = np.array([0.0, 0.3, 0.5, 0.6, 0.7, 0.8])  # the predicted echo's fading per frame: dry to RT60 ~0.6 s
GAIN_RATE = 0.05  # the band gains' smoothing per frame once learnt
LEARN_FRAMES = 50  # frames of expected echo over which the gains are first learnt ...
TRIAL_FRAMES = 100  # ... then the frames over which the fading and the margin are chosen


def band_powers(frame: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Powers of a 10 ms frame in the bands, over a 20 ms Hann window with the frame before it."""
    window = np.hanning(2 * FRAME)
    spectrum = np.abs(np.fft.rfft(np.concatenate([previous, frame]) * window, FFT)) ** 2
    return np.add.reduceat(spectrum, _BAND_STARTS)[:-1]


_BINS = np.fft.rfftfreq(FFT, 1 / MODEL_RATE)
_BAND_STARTS = np.searchsorted(_BINS, BAND_EDGES_HZ)


class NearEndDetector:
    """``detector.push(near, far)`` with int16 microphone and played audio paired sample by sample
    (whole 10 ms frames); :meth:`take_heard` says whether (and since when) the user spoke over the
    reply since it was last asked; :meth:`echo_share` how much of the last frames the reply's echo explains."""

    def __init__(self) -> None:
        history = int(DELAY_WINDOW_S * MODEL_RATE + MAX_DELAY_S * MODEL_RATE)
        self._near = np.zeros(history, dtype=np.float32)
        self._far = np.zeros(history, dtype=np.float32)
        self._far_powers: list[np.ndarray] = []  # per frame, the last MAX_DELAY_S + a margin
        self._previous = (np.zeros(FRAME), np.zeros(FRAME))
        self.delay_frames: int | None = None
        self._relearn()
        self._frames = 0
        self._run = 0
        self._run_start = 0  # the frame count at the start of the current run
        self._heard: int | None = None  # the run's start, once it is long enough
        self._verdicts: deque[str] = deque(maxlen=100)  # "user", "echo" or "quiet" per frame

    @property
    def ready(self) -> bool:
        """The echo's delay, gains and fading are learnt."""
        return self._tail_index is not None

    def _relearn(self) -> None:
        bands = BAND_EDGES_HZ.size - 1
        self._tails = np.zeros((TAILS.size, bands))
        self._echo_power = np.zeros(bands)
        self._far_power = np.zeros((TAILS.size, bands))
        self._learnt = self._tried = 0
        self._worst_db = np.full(TAILS.size, -np.inf)
        self._tail_index: int | None = None
        self.margin_db = MIN_MARGIN_DB

    def push(self, near: np.ndarray, far: np.ndarray) -> None:
        near_f = near.astype(np.float32) / 32768.0
        far_f = far.astype(np.float32) / 32768.0
        for start in range(0, near_f.size - FRAME + 1, FRAME):
            self._frame(near_f[start:start + FRAME], far_f[start:start + FRAME])

    def take_heard(self) -> float | None:
        """Whether the user spoke over the reply since last asked: None, or the seconds from the
        start of their voice to the end of the audio pushed so far."""
        heard, self._heard = self._heard, None
        return None if heard is None else (self._frames - heard) * FRAME / MODEL_RATE

    def echo_share(self, frames: int = 20) -> float:
        """Share of the last ``frames`` frames that the reply's echo explains."""
        recent = list(self._verdicts)[-frames:]
        return recent.count("echo") / len(recent) if recent else 0.0

    def _frame(self, near: np.ndarray, far: np.ndarray) -> None:
        self._remember(near, far)
        near_powers = band_powers(near, self._previous[0])
        self._far_powers.append(band_powers(far, self._previous[1]))
        self._previous = (near.astype(np.float64), far.astype(np.float64))
        del self._far_powers[:-int(MAX_DELAY_S * 100) - JITTER - 2]
        self._frames += 1
        if self._frames % DELAY_EVERY == 0:
            self._estimate_delay()
        verdict = self._judge(near_powers)
        self._verdicts.append(verdict)
        if verdict == "user":
            self._run += 1
            self._run_start = self._frames - 1 if self._run == 1 else self._run_start
            if self._run == FRAMES:  # once per run: the reply is cut once, however long the user speaks
                self._heard = self._run_start
        elif verdict == "echo":
            self._run = 0  # frames without an expected echo neither count nor break a run

    def _remember(self, near: np.ndarray, far: np.ndarray) -> None:
        self._near = np.roll(self._near, -near.size)
        self._far = np.roll(self._far, -far.size)
        self._near[-near.size:] = near
        self._far[-far.size:] = far

    def _predicted_echo(self) -> np.ndarray | None:
        """The played audio's power per band around the delay, fading at each candidate rate."""
        if self.delay_frames is None or len(self._far_powers) < self.delay_frames + JITTER + 1:
            return None
        newest = len(self._far_powers) - 1 - self.delay_frames
        around = np.max(self._far_powers[max(0, newest - JITTER):newest + JITTER + 1], axis=0)
        self._tails = np.maximum(around, TAILS[:, None] * self._tails)
        return self._tails

    def _judge(self, near_powers: np.ndarray) -> str:
        played = self._predicted_echo()
        if played is None or played[0].sum() < ECHO_EXPECTED or self._silence_played():
            return "quiet"
        if self._learnt < LEARN_FRAMES:
            self._learn(near_powers, played)
            return "quiet"
        audible = near_powers > AUDIBLE
        if audible.sum() < 4:
            return "echo"
        gains = self._echo_power / (self._far_power + 1e-20)
        excess_db = 10 * np.log10((near_powers[audible] + AUDIBLE) / (gains[:, audible] * played[:, audible] + AUDIBLE))
        unexplained_db = np.percentile(excess_db, 100 * (1 - SHARE), axis=1)  # per candidate fading
        if self.tail is None:
            self._try_tails(unexplained_db)
            return "quiet"
        if unexplained_db[self._tail_index] > self.margin_db:
            return "user"
        self._learn(near_powers, played)
        return "echo"

    def _silence_played(self) -> bool:
        """Silence was played at the echo's delay: between replies, or where the device ran dry
        and the player's report of it is a few milliseconds off; either way the echo around it is
        not predicted well enough to tell a voice from it."""
        return float(self._far_powers[-1 - self.delay_frames].sum()) < SILENCE

    def _learn(self, near_powers: np.ndarray, played: np.ndarray) -> None:
        """The echo path's gain per band: the sums over the first LEARN_FRAMES frames in which the
        echo is expected, then followed over the frames the reply alone explains."""
        self._learnt += 1
        if self._learnt <= LEARN_FRAMES:
            self._echo_power = self._echo_power + near_powers
            self._far_power = self._far_power + played
        else:
            self._echo_power += GAIN_RATE * (near_powers - self._echo_power)
            self._far_power += GAIN_RATE * (played - self._far_power)

    def _try_tails(self, unexplained_db: np.ndarray) -> None:
        """Over TRIAL_FRAMES of the reply alone, the fading whose prediction explains it most
        tightly: the margin a frame must exceed is the most the reply alone did, plus GUARD_DB
        (a dry room fades at once and its echo is predicted closely; a reverberant one needs a
        slower fading, and its echo is predicted more loosely)."""
        self._tried += 1
        self._worst_db = np.maximum(self._worst_db, unexplained_db)
        if self._tried >= TRIAL_FRAMES:
            margins = np.maximum(self._worst_db + GUARD_DB, MIN_MARGIN_DB)
            self._tail_index = int(np.argmin(margins))
            self.margin_db = float(margins[self._tail_index])

    @property
    def tail(self) -> float | None:
        """The per-frame fading of the echo chosen for this room; None while it is being chosen."""
        return None if self._tail_index is None else float(TAILS[self._tail_index])

    def _estimate_delay(self) -> None:
        """GCC-PHAT over the last DELAY_WINDOW_S: the lag at which the microphone best matches what
        was played, trusted only when the reply played through most of it and the peak stands out."""
        span = int(DELAY_WINDOW_S * MODEL_RATE)
        far = self._far
        if np.mean(np.abs(far[-span:]) > 1e-3) < 0.3:
            return
        near = self._near[-span:]
        size = 1 << int(np.ceil(np.log2(far.size + span)))
        cross = np.fft.rfft(near, size) * np.conj(np.fft.rfft(far, size))
        correlation = np.fft.irfft(cross / (np.abs(cross) + 1e-12), size)
        # near[i] is sample offset + i of the history; its echo of far[offset + i - lag] peaks at lag - offset
        offset = far.size - span
        lags = np.arange(0, int(MAX_DELAY_S * MODEL_RATE))
        scores = np.abs(correlation[(lags - offset) % size])
        best = int(np.argmax(scores))
        if scores[best] > DELAY_PEAK * np.mean(scores):
            frames = round(lags[best] / FRAME)
            if frames != self.delay_frames and not self.ready:
                self._relearn()  # at the new delay; once learnt, the room's gains and fading stay
            self.delay_frames = frames
