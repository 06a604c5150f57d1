"""Fixtures for the speech tokenizer tests: a tiny generated checkpoint and speech-like signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

PARITY = SHARED / "reference" / "parity" / "tokenizer-tiny"
KEYS = SHARED / "reference" / "keys" / "tokenizer-full.txt"
RATE = 16000


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing.speech_tokenizer import write

    entry = write(tmp_path_factory.mktemp("models"), "tiny", seed=3)
    return Path(entry["models"]["speech_tokenizer"]["source"])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    from voicechat.glm.speech_tokenizer import SpeechTokenizer

    return SpeechTokenizer.from_pretrained(tiny_tokenizer_dir, device="cpu")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.skip("the shared parity vectors (../shared/reference/parity) are not beside this checkout")
    return PARITY


def speech_like(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Harmonics of a wandering pitch in syllable-like bursts, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pitch = rng.uniform(100, 220) + 40 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) * rng.uniform(0.2, 1.0) / k for k in range(1, 14))
    bursts = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 6)), 0, None) ** 2
    return (0.25 * voiced * bursts + 0.005 * rng.standard_normal(n)).astype(np.float32)


def agreement(a: list[int], b: list[int]) -> float:
    assert len(a) == len(b)
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else 1.0
