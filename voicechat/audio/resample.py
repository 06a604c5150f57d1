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


class StreamResampler:
    """Resamples a signal that arrives in blocks of any size, giving the same samples as
    :func:`resample` on the whole signal (the same polyphase filter, with its history carried
    from block to block), so block edges leave no clicks. 1-D float32 in and out."""

    def __init__(self, rate: int, target: int) -> None:
        common = gcd(int(rate), int(target))
        self.rate, self.target = int(rate), int(target)
        self.up, self.down = self.target // common, self.rate // common
        if self.up == self.down:
            return
        from scipy.signal import firwin

        half_len = 10 * max(self.up, self.down)
        taps = firwin(2 * half_len + 1, 1.0 / max(self.up, self.down), window=("kaiser", 5.0))
        taps = taps * self.up
        per_phase = -(-taps.size // self.up)
        taps = np.pad(taps, (0, per_phase * self.up - taps.size))
        # _phases[p, i] weighs input sample (k_last - per_phase + 1 + i) for output phase p
        self._phases = taps.reshape(per_phase, self.up).T[:, ::-1].astype(np.float32)
        self._delay = half_len
        self._per_phase = per_phase
        self._window = np.arange(-(per_phase - 1), 1)
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next block starts a new signal."""
        if self.up == self.down:
            return
        self._history = np.zeros(self._per_phase, dtype=np.float32)
        self._first = -self._per_phase  # stream index of _history[0]
        self._next = 0  # index of the next output sample
        self._received = 0  # input samples so far

    def process(self, block: np.ndarray) -> np.ndarray:
        block = as_float32(np.asarray(block))
        if self.up == self.down:
            return block
        self._received += block.size
        self._history = np.concatenate([self._history, block])
        available = self._first + self._history.size
        # output m needs inputs up to (m * down + delay) // up
        stop = (available * self.up - 1 - self._delay) // self.down + 1
        if stop <= self._next:
            return np.zeros(0, dtype=np.float32)
        position = np.arange(self._next, stop) * self.down + self._delay
        last_input, phase = np.divmod(position, self.up)
        window = self._history[(last_input - self._first)[:, None] + self._window]
        out = np.einsum("mi,mi->m", window, self._phases[phase])
        self._next = stop
        keep_from = (stop * self.down + self._delay) // self.up - (self._per_phase - 1)
        if keep_from > self._first:
            self._history = self._history[keep_from - self._first:]
            self._first = keep_from
        return out.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """The samples still held back at the end of the signal (the filter's delay), as if it
        ended with silence; the next block starts a new signal."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self.up // self.down)  # the whole signal's output length
        missing = total - self._next
        padding = np.zeros(self._delay // self.up + self._per_phase + 1, dtype=np.float32)
        out = self.process(padding)[:missing]
        self.reset()
        return out
