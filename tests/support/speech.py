"""Spoken test material: questions synthesised with espeak-ng, mixed with silence and noise, with
the true start and end of speech known to the sample."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

RATE = 16000

QUESTIONS = {
    "en": "What is the capital of France, and how many people live there?",
    "en-first": "Tell me about the weather",
    "en-second": "and what should I wear tomorrow?",
    "zh": "请问法国的首都是哪里？那里有多少人口？",
}
VOICES = {"en": "en-us", "en-first": "en-us", "en-second": "en-us", "zh": "cmn"}


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=None)
def speak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32, trimmed to the speech and scaled to -20 dBFS RMS."""
    import soundfile

    from voicechat.audio.resample import to_model_input

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    speech = to_model_input(samples, rate)
    start, end = speech_bounds(speech)
    speech = speech[start:end]
    return (speech * (0.1 / np.sqrt(np.mean(speech**2)))).astype(np.float32)


def question(name: str) -> np.ndarray:
    return speak(QUESTIONS[name], VOICES[name])


def speech_bounds(samples: np.ndarray, threshold: float = 0.02) -> tuple[int, int]:
    """First and one-past-last sample louder than ``threshold`` of the peak."""
    loud = np.flatnonzero(np.abs(samples) > threshold * np.abs(samples).max())
    return int(loud[0]), int(loud[-1]) + 1


@dataclass(frozen=True)
class Scene:
    samples: np.ndarray  # int16, 16 kHz
    speech: list[tuple[float, float]]  # true (start, end) of each spoken part, seconds

    @property
    def duration(self) -> float:
        return self.samples.size / RATE


def vowels(seconds: float = 1.0, pitch_hz: float = 120.0) -> np.ndarray:
    """A voiced, syllable-like sound the endpointer takes for speech, without espeak-ng: a pulse
    train at ``pitch_hz`` through three formant resonances of an "a", four syllables a second."""
    from scipy.signal import lfilter

    count = int(RATE * seconds)
    sound = np.zeros(count)
    sound[::int(RATE / pitch_hz)] = 1.0
    for centre, bandwidth in ((700, 130), (1220, 70), (2600, 160)):
        radius, angle = np.exp(-np.pi * bandwidth / RATE), 2 * np.pi * centre / RATE
        sound = lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius * radius], sound)
    sound *= 0.5 * (1 - np.cos(2 * np.pi * 4.0 * np.arange(count) / RATE))
    return (0.3 * sound / np.max(np.abs(sound))).astype(np.float32)


def noise(seconds: float, dbfs: float | None, seed: int = 0) -> np.ndarray:
    """Steady white noise at an RMS level in dBFS (None: digital silence)."""
    count = int(round(seconds * RATE))
    if dbfs is None:
        return np.zeros(count, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(count) * 10 ** (dbfs / 20)).astype(np.float32)


def scene(parts: list[np.ndarray | float], noise_dbfs: float | None = None, seed: int = 0) -> Scene:
    """Speech arrays and silent gaps (seconds) laid end to end, over steady noise."""
    pieces, spans, position = [], [], 0
    for part in parts:
        if isinstance(part, (int, float)):
            piece = np.zeros(int(round(part * RATE)), dtype=np.float32)
        else:
            piece = np.asarray(part, dtype=np.float32)
            start, end = speech_bounds(piece)
            spans.append(((position + start) / RATE, (position + end) / RATE))
        pieces.append(piece)
        position += piece.size
    clean = np.concatenate(pieces)
    mixed = clean + noise(clean.size / RATE, noise_dbfs, seed)
    return Scene(np.clip(mixed * 32768, -32768, 32767).astype(np.int16), spans)
