"""Endpointing: deciding from 16 kHz mono audio when the user starts and stops speaking.

Pure and deterministic: the same samples give the same events, whether they come from a
microphone or a file. Each frame (10/20/30 ms) counts as speech when webrtcvad says so *and* its
energy stands ``energy_margin_db`` above an adaptive noise floor (a low percentile of the recent
frame energies), so steady background noise, which webrtcvad often takes for speech, neither
starts an utterance nor holds one open.

An utterance starts when ``start_speech_ms`` of the last ``start_window_ms`` were speech (a ring
buffer, as in py-webrtcvad's example); its audio begins ``preroll_ms`` before the first speech
frame of that window. It ends after ``trailing_silence_ms`` without speech, or at
``max_utterance_s``. Utterances shorter than ``min_utterance_ms`` are discarded.

With a :class:`~voicechat.audio.turn.TurnDetector` (``audio.turn: smart``), Silero VAD confirms
webrtcvad: an utterance starts only on frames both take for speech, and once both have heard
``turn_silence_ms`` of silence after speech the end-of-turn model is asked, again every
``turn_check_ms``: the utterance ends as soon as it says the turn is complete (reason
``complete``), else after the preset's longest silence (``VadConfig.smart``). The model's compute
time is part of when it decided: the end's ``t`` is the frame's time plus that time.

A pause inside an utterance is reported too: after ``pause_ms`` of silence (and at least the
tail), ``Paused`` carries the utterance so far, the very audio its end will carry unless speech
follows; speech after it is ``Resumed``. The conversation may start the reply in the pause.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from voicechat.audio.events import Level, Paused, Resumed, SpeechStarted, UtteranceDiscarded, UtteranceEnded
from voicechat.audio.resample import MODEL_RATE
from voicechat.config import VadConfig

if TYPE_CHECKING:
    from voicechat.audio.turn import TurnDetector

SILENCE_DBFS = -100.0  # the level reported for digital silence
FLOOR_MIN_DBFS = -70.0  # the noise floor never goes below this
FLOOR_PERCENTILE = 15.0  # of the frame energies over noise_window_s

Event = SpeechStarted | Level | Paused | Resumed | UtteranceEnded | UtteranceDiscarded


def frame_dbfs(frame: np.ndarray) -> float:
    """Level of int16 samples in dB relative to full scale (a full-scale square wave is 0)."""
    power = float(np.mean(np.square(frame.astype(np.float32) / 32768.0)))
    return max(SILENCE_DBFS, 10.0 * np.log10(power)) if power > 0 else SILENCE_DBFS


class Endpointer:
    """Feed int16 16 kHz mono samples with :meth:`push`; get events back."""

    def __init__(self, config: VadConfig = VadConfig(), origin: float = 0.0,
                 turn: TurnDetector | None = None) -> None:
        import webrtcvad

        self.config = config
        self.turn = turn
        self.origin = origin  # the time of the first sample pushed
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self.frame_len = MODEL_RATE * config.frame_ms // 1000
        self._frame_s = config.frame_ms / 1000.0
        self._trailing = _frames(config.trailing_ms if turn is None else config.smart.longest_ms, config.frame_ms)
        self._first_check = _frames(config.smart.silence_ms, config.frame_ms)
        self._check = _frames(config.turn_check_ms, config.frame_ms)
        self._silent = 0  # speechless frames since the last speech frame of the utterance
        self._quiet = 0  # frames since Silero last heard speech
        self._pause = max(_frames(config.pause_ms, config.frame_ms), self._tail_frames(config))
        self._paused = False  # a Paused was reported and no speech came since
        self._decision_s = 0.0  # the end-of-turn model's compute time for its last answer
        self._preroll = _frames(config.preroll_ms, config.frame_ms, at_least=0)
        self._tail = self._tail_frames(config)
        self._start_speech = _frames(config.start_speech_ms, config.frame_ms)
        self._max_frames = max(1, int(config.max_utterance_s * 1000 // config.frame_ms))
        window = max(_frames(config.start_window_ms, config.frame_ms), self._start_speech)
        self._window: deque[bool] = deque(maxlen=window)
        self._recent: deque[np.ndarray] = deque(maxlen=window + self._preroll)
        self._energies: deque[float] = deque(maxlen=_frames(config.noise_window_s * 1000, config.frame_ms))
        self._energies_sorted: list[float] = []  # the same values in order, for the percentile
        self._level_frames = _frames(config.level_interval_ms, config.frame_ms)
        self._pending = np.zeros(0, dtype=np.int16)
        self._index = 0  # index of the next frame
        self._floor = FLOOR_MIN_DBFS
        self._level_power: list[float] = []
        self._utterance: list[np.ndarray] | None = None  # frames of the utterance in progress
        self._speech_frames: list[bool] = []  # which of them were speech
        self._utterance_first = 0  # frame index of its first frame
        self._speech_start = 0  # frame index of its first speech frame

    @property
    def speaking(self) -> bool:
        return self._utterance is not None

    @staticmethod
    def _tail_frames(config: VadConfig) -> int:
        return _frames(config.tail_ms, config.frame_ms, at_least=0)

    @property
    def noise_floor_dbfs(self) -> float:
        return self._floor

    def push(self, samples: np.ndarray) -> list[Event]:
        samples = np.asarray(samples)
        if samples.dtype != np.int16:
            raise TypeError("the endpointer takes int16 samples")
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        whole = samples.size - samples.size % self.frame_len
        self._pending = samples[whole:].copy()
        events: list[Event] = []
        for offset in range(0, whole, self.frame_len):
            events.extend(self._frame(samples[offset:offset + self.frame_len]))
        return events

    def finish(self) -> list[Event]:
        """The stream ended: close the utterance in progress, if any."""
        self._pending = np.zeros(0, dtype=np.int16)
        if self._utterance is None:
            return []
        return [self._end(self._index - 1, "stream_end")]

    def begin(self, at: float) -> SpeechStarted | None:
        """Start an utterance now, its speech begun at ``at``: the user heard by other means than
        this endpointer (speaking over the reply, where the canceller takes most of the voice out
        with the echo). It keeps the pre-roll before ``at`` as far as the recent frames reach.
        None when an utterance is in progress or no frame was heard yet."""
        if self._utterance is not None or not self._recent:
            return None
        index = self._index - 1
        start_index = min(index, max(index - len(self._recent) + 1, int((at - self.origin) / self._frame_s)))
        return self._start(index, start_index)

    def skip(self, count: int) -> None:
        """Let ``count`` samples pass unheard (half-duplex, while the assistant speaks): the
        utterance in progress and the start window are dropped, the clock moves on, the noise
        floor is kept."""
        total = self._pending.size + count
        self._index += total // self.frame_len
        self._pending = np.zeros(total % self.frame_len, dtype=np.int16)
        self._utterance = None
        self._speech_frames = []
        self._paused = False
        self._window.clear()
        self._recent.clear()
        if self.turn is not None:
            self.turn.reset()

    # --- one frame --------------------------------------------------------------------------------

    def _frame(self, frame: np.ndarray) -> list[Event]:
        index = self._index
        self._index += 1
        dbfs = frame_dbfs(frame)
        self._update_floor(dbfs)
        speech = dbfs > self._floor + self.config.energy_margin_db and self._vad.is_speech(
            frame.tobytes(), MODEL_RATE
        )
        confirmed = speech
        if self.turn is not None:
            voice = self.turn.speech(frame, speech)  # Silero hears every frame, to keep its state
            self._quiet = 0 if voice else self._quiet + 1
            confirmed = speech and voice
        self._recent.append(frame)
        self._window.append(confirmed)
        events: list[Event] = []
        if self._utterance is None:
            if sum(self._window) >= self._start_speech:
                events.append(self._start(index))
        else:
            self._utterance.append(frame)
            self._speech_frames.append(speech)
            self._silent = 0 if speech else self._silent + 1
            if speech and self._paused:
                events.append(self._resume(index))
            ended = self._ending_reason()
            if ended:
                events.append(self._end(index, ended))
            elif not self._paused and self._pausing():
                paused = self._pause_event(index)
                if paused is not None:
                    events.append(paused)
        level = self._level(index, dbfs, speech)
        if level:
            events.append(level)
        return events

    def _update_floor(self, dbfs: float) -> None:
        energies, ordered = self._energies, self._energies_sorted
        if len(energies) == energies.maxlen:
            del ordered[bisect_left(ordered, energies[0])]
        energies.append(dbfs)
        insort(ordered, dbfs)
        self._floor = max(FLOOR_MIN_DBFS, _percentile(ordered, FLOOR_PERCENTILE))

    def _start(self, index: int, start_index: int | None = None) -> SpeechStarted:
        """An utterance from the start window's first speech frame (or ``start_index``) on."""
        if start_index is None:
            window = list(self._window)
            first = window.index(True)
            start_index = index - len(window) + 1 + first
            flags = window[first:]
        else:
            flags = [True] * (index - start_index + 1)
        kept = min(len(self._recent), index - start_index + 1 + self._preroll)
        self._utterance = list(self._recent)[-kept:]
        self._utterance_first = index - kept + 1
        self._speech_frames = [False] * (kept - len(flags)) + flags
        self._speech_start = start_index
        self._silent = 0
        self._paused = False
        if self.turn is not None:
            self.turn.probability = None  # the meter shows this utterance's answers only
        return SpeechStarted(t=self._time(index + 1), start=self._time(start_index))

    def _ending_reason(self) -> str | None:
        if not any(self._speech_frames[-self._trailing:]) and len(self._speech_frames) >= self._trailing:
            return "silence"
        if len(self._utterance) >= self._max_frames:
            return "max_length"
        pause = self._silence() - self._first_check
        if self.turn is not None and pause >= 0 and pause % self._check == 0:
            started = self.turn.clock()
            complete = self.turn.complete(np.concatenate(self._utterance))
            self._decision_s = self.turn.clock() - started
            if complete:
                return "complete"
        return None

    def _silence(self) -> int:
        """Frames of silence after the utterance's speech (with Silero: both VADs hear it)."""
        return min(self._silent, self._quiet) if self.turn is not None else self._silent

    def _pausing(self) -> bool:
        return self._silence() >= self._pause

    def _so_far(self) -> tuple[float, float, list[np.ndarray]]:
        """The utterance's start and end of speech, and its frames up to the tail after that end."""
        flags = self._speech_frames
        last = len(flags) - 1 - flags[::-1].index(True)  # an utterance starts with speech
        start, end = self._time(self._speech_start), self._time(self._utterance_first + last + 1)
        return start, end, self._utterance[: last + 1 + self._tail]

    def _pause_event(self, index: int) -> Paused | None:
        start, end, frames = self._so_far()
        if (end - start) * 1000 < self.config.min_utterance_ms:
            return None  # it would be discarded: nothing to prepare
        self._paused = True
        return Paused(t=self._time(index + 1), start=start, end=end, audio=np.concatenate(frames),
                      audio_start=self._time(self._utterance_first))

    def _resume(self, index: int) -> Resumed:
        self._paused = False
        if self.turn is not None:
            self.turn.probability = None
        return Resumed(t=self._time(index + 1))

    def _end(self, index: int, reason: str) -> UtteranceEnded | UtteranceDiscarded:
        start, end, frames = self._so_far()
        model_s = self._decision_s if reason == "complete" else 0.0
        decided = self._time(index + 1) + model_s
        self._utterance = None
        self._speech_frames = []
        self._window.clear()
        self._paused = False
        if (end - start) * 1000 < self.config.min_utterance_ms:
            return UtteranceDiscarded(t=decided, start=start, end=end)
        return UtteranceEnded(
            t=decided,
            start=start,
            end=end,
            audio=np.concatenate(frames),
            audio_start=self._time(self._utterance_first),
            reason=reason,  # type: ignore[arg-type]
            model_s=model_s,
        )

    def _level(self, index: int, dbfs: float, speech: bool) -> Level | None:
        self._level_power.append(10.0 ** (dbfs / 10.0))
        if len(self._level_power) < self._level_frames:
            return None
        power = float(np.mean(self._level_power))
        self._level_power = []
        return Level(
            t=self._time(index + 1),
            dbfs=max(SILENCE_DBFS, 10.0 * np.log10(power)) if power > 0 else SILENCE_DBFS,
            noise_floor_dbfs=self._floor,
            speech=speech,
            speaking=self._utterance is not None,
            turn_probability=self.turn.probability if self.turn is not None else None,
        )

    def _time(self, frame_index: int) -> float:
        return self.origin + frame_index * self._frame_s


def _percentile(ordered: list[float], percent: float) -> float:
    """np.percentile's default (linear) of values already in order, without numpy's overhead:
    it runs for every frame."""
    position = percent / 100 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _frames(ms: float, frame_ms: int, at_least: int = 1) -> int:
    return max(at_least, int(round(ms / frame_ms)))


def find_utterances(samples: np.ndarray, config: VadConfig = VadConfig(),
                    turn: TurnDetector | None = None) -> list[Event]:
    """All events for a whole recording (16 kHz mono int16), including the end of stream."""
    endpointer = Endpointer(config, turn=turn)
    return endpointer.push(samples) + endpointer.finish()


def contains_speech(samples: np.ndarray, config: VadConfig = VadConfig()) -> bool:
    """Whether a whole recording (16 kHz mono float32) holds an utterance that a microphone
    turn would accept: silence, steady noise and clips shorter than min_utterance_ms do not."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return any(isinstance(event, UtteranceEnded) for event in find_utterances(pcm, config))
