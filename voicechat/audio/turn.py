"""End of turn from the audio itself: Smart Turn v3 (a Whisper-tiny encoder with a classifier, an
ONNX file) says whether the utterance so far sounds finished, and Silero VAD (ONNX) says frame by
frame whether there is speech, more robustly than webrtcvad in noise.

Both run on onnxruntime with one thread. The endpointer asks the turn model once silence has
started after speech; what it needs is the :class:`TurnModel` protocol, so tests and other models
can stand in.

Smart Turn's input, as its authors prepare it (pipecat's ``LocalSmartTurnAnalyzerV3``): the last
8 s of 16 kHz audio (zeros in front when shorter), normalised to zero mean and unit variance over
those 8 s, then Whisper's log-mel features (80 bins, 25 ms Hann windows every 10 ms, Slaney mel
scale, log10 clipped 8 below the maximum, (x + 4) / 4), 800 frames.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.errors import ModelError

WINDOW_S = 8  # Smart Turn looks at the last 8 s
N_FFT, HOP, N_MELS = 400, 160, 80
SILERO_WINDOW = 512  # samples per Silero VAD step at 16 kHz (32 ms)
SILERO_CONTEXT = 64  # samples of the previous step the model sees again


class TurnModel(Protocol):
    """Whether an utterance sounds finished."""

    def probability(self, audio: np.ndarray) -> float:
        """Probability that the turn is complete, for 16 kHz mono float32 audio ending now."""
        ...


# --- Whisper features -----------------------------------------------------------------------------


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4), linear)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), linear)


@functools.lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Whisper's 80 triangular filters over the 201 FFT bins, area-normalised: (201, 80)."""
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(MODEL_RATE / 2), N_MELS + 2))
    bins = np.linspace(0, MODEL_RATE // 2, N_FFT // 2 + 1)
    rising = (bins[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    falling = (edges[None, 2:] - bins[:, None]) / np.diff(edges)[None, 1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """Smart Turn's input for 16 kHz float audio: (80, 800) float32 log-mel features of the last
    8 s, zero-padded in front."""
    samples = WINDOW_S * MODEL_RATE
    x = np.asarray(audio, dtype=np.float32)[-samples:]
    x = np.pad(x, (samples - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(power @ mel_filters(), 1e-10)).T[:, :-1]  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


# --- the ONNX models ------------------------------------------------------------------------------


def _session(path: Path, label: str):
    """A one-thread onnxruntime session, or ModelError naming the file when it cannot be read."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"{label} needs onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: the warnings would draw over the app
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes for missing and corrupt files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{label}: cannot load {path} ({first[:200]})") from None


class SmartTurn:
    """Smart Turn v3 on onnxruntime: ``SmartTurn.load(path).probability(audio)``."""

    def __init__(self, session) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path | str) -> SmartTurn:
        model = cls(_session(Path(path), "end-of-turn model"))
        try:
            model.probability(np.zeros(MODEL_RATE // 10, np.float32))  # a wrong graph fails now, not mid-turn
        except Exception as error:
            raise ModelError(f"end-of-turn model: {path} is not a Smart Turn v3 model ({type(error).__name__})") from None
        return model

    def probability(self, audio: np.ndarray) -> float:
        features = log_mel_features(audio)[None]
        return float(np.asarray(self._session.run(None, {self._input: features})[0]).reshape(-1)[0])


class SileroVad:
    """Silero VAD v5/v6 on onnxruntime, streaming: :meth:`push` 16 kHz float audio, get one speech
    probability per 512 samples; the recurrent state carries over between calls."""

    def __init__(self, session) -> None:
        self._session = session
        self.reset()

    @classmethod
    def load(cls, path: Path | str | None = None) -> SileroVad:
        return cls(_session(Path(path) if path else silero_path(), "Silero VAD"))

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(SILERO_CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def push(self, audio: np.ndarray) -> list[float]:
        audio = np.concatenate([self._pending, np.asarray(audio, np.float32)])
        whole = audio.size - audio.size % SILERO_WINDOW
        self._pending = audio[whole:]
        return [self._step(audio[i:i + SILERO_WINDOW]) for i in range(0, whole, SILERO_WINDOW)]

    def _step(self, window: np.ndarray) -> float:
        x = np.concatenate([self._context, window])[None]
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": np.array(MODEL_RATE, dtype=np.int64)})
        self._context = window[-SILERO_CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])


def silero_path() -> Path:
    """The Silero VAD ONNX file inside the silero-vad package."""
    from importlib import resources

    try:
        path = Path(str(resources.files("silero_vad") / "data" / "silero_vad.onnx"))
    except ModuleNotFoundError:
        raise ModelError("Silero VAD needs the silero-vad package: pip install silero-vad") from None
    if not path.is_file():
        raise ModelError(f"Silero VAD: {path} is missing; reinstall the silero-vad package")
    return path


# --- what the endpointer uses ---------------------------------------------------------------------


class TurnDetector:
    """The learned end of turn for one stream: the turn model, and Silero VAD confirming webrtcvad's
    speech frames. ``speech(frame)`` is asked for every frame, ``complete(audio)`` once silence has
    started after speech."""

    ON, OFF = 0.5, 0.35  # Silero's probability that starts and keeps speech (its own hysteresis)

    def __init__(self, model: TurnModel, threshold: float, silero: SileroVad | None = None) -> None:
        self.model = model
        self.threshold = threshold
        self.silero = silero
        self.probability: float | None = None  # the turn model's last answer
        self.clock = time.perf_counter  # times the model: its compute is part of when it decided
        self._voice = 0.0
        self._in_speech = False

    def speech(self, frame: np.ndarray, heard: bool) -> bool:
        """Whether Silero hears speech at the end of this int16 frame; without Silero, what the
        endpointer ``heard``."""
        if self.silero is None:
            return heard
        steps = self.silero.push(frame.astype(np.float32) / 32768.0)
        if steps:
            self._voice = steps[-1]
        self._in_speech = self._voice >= (self.OFF if self._in_speech else self.ON)
        return self._in_speech

    def complete(self, audio: np.ndarray) -> bool:
        """Whether the utterance so far (int16, 16 kHz) sounds finished."""
        self.probability = self.model.probability(audio.astype(np.float32) / 32768.0)
        return self.probability >= self.threshold

    def reset(self) -> None:
        """Audio was skipped: Silero's state no longer follows the stream."""
        if self.silero is not None:
            self.silero.reset()
        self._voice, self._in_speech, self.probability = 0.0, False, None


def turn_model_file(path: Path) -> Path:
    """The ONNX file in a model folder (the hub snapshot or a local folder), or ``path`` itself."""
    from voicechat.models import TURN_MODEL_FILE

    return path / TURN_MODEL_FILE if path.is_dir() else path


def load_turn_detector(config) -> tuple[TurnDetector | None, str | None]:
    """For ``audio.turn: smart``: the detector, or None and one line saying why the conversation
    falls back to the silence endpointer (a missing or broken model must not stop it)."""
    from voicechat.models import resolve_model

    if config.audio.turn != "smart":
        return None, None
    try:
        model = SmartTurn.load(turn_model_file(resolve_model("turn", config)))
        silero = SileroVad.load()
    except ModelError as error:
        return None, f"{error}; ending turns after silence instead"
    return TurnDetector(model, config.audio.vad.smart.threshold, silero), None
