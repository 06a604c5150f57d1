"""Sample-rate and channel conversion. Every model input goes through here: SONAR and the speech
tokenizer expect 16 kHz mono and do not resample themselves."""

from __future__ import annotations

from math import gcd

import numpy as np

MODEL_RATE = 16000


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32, averaging the channels."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples.astype(np.float32).mean(axis=1)
    return as_float32(samples)


def as_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM is scaled to [-1, 1); float input is passed through as float32."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float signal."""
    if rate == target or samples.size == 0:
        return as_float32(samples)
    from scipy.signal import resample_poly

    common = gcd(int(rate), int(target))
    out = resample_poly(as_float32(samples), target // common, rate // common)
    return out.astype(np.float32, copy=False)


def to_model_input(samples: np.ndarray, rate: int, target: int = MODEL_RATE) -> np.ndarray:
    """Any rate and channel count -> mono float32 at ``target`` Hz."""
    return resample(to_mono(samples), rate, target)
