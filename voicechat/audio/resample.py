"""Sample-rate and channel conversion. Every model input goes through here: SONAR and the speech
tokenizer expect 16 kHz mono and do not resample themselves.

Resampling is torchaudio's sinc resampler with its defaults (Hann-windowed sinc, 6 zero crossings,
roll-off 0.99 of the lower Nyquist frequency), the one the GLM-4-Voice reference applies before its
speech tokenizer, so that speech at any rate gives the reference's tokens. Whole signals go through
`torchaudio.functional.resample` itself (:func:`resample`); live audio goes through
:class:`StreamResampler`, which applies the same kernel block by block."""

from __future__ import annotations

from math import gcd
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MODEL_RATE = 16000
SMALL_BLOCK_MACS = 4_000_000  # multiply-adds up to which numpy resamples a block faster than torch


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
    """A whole 1-D signal at ``target`` Hz: float32, the samples of
    ``torchaudio.functional.resample(waveform, rate, target)``, ceil(n × target / rate) of them."""
    samples = as_float32(np.asarray(samples))
    if rate == target or samples.size == 0:
        return samples
    import torch
    from torchaudio.functional import resample as sinc_resample

    with torch.inference_mode():
        return sinc_resample(_tensor(samples), int(rate), int(target)).numpy()


def to_model_input(samples: np.ndarray, rate: int, target: int = MODEL_RATE) -> np.ndarray:
    """Any rate and channel count -> mono float32 at ``target`` Hz."""
    return resample(to_mono(samples), rate, target)


class StreamResampler:
    """Resamples a signal that arrives in blocks of any size with the kernel of :func:`resample`.

    The stream starts with the zero padding the whole-signal resampler puts before the signal, and
    :meth:`flush` adds the padding it puts after, so blocks followed by ``flush()`` give the samples
    of :func:`resample` on the whole signal, edges included (equal to float32 rounding: both are
    the same dot products, computed by convolutions over differently cut inputs). Each output sample
    waits for the input that its kernel reaches: about 6 input periods at the lower of the two
    rates. 1-D float32 in and out."""

    def __init__(self, rate: int, target: int) -> None:
        self.rate, self.target = int(rate), int(target)
        if self.rate == self.target:
            return
        import torch
        from torchaudio.transforms import Resample

        # dtype float32: the kernel torchaudio.functional.resample builds for a float32 signal
        sinc = Resample(self.rate, self.target, dtype=torch.float32)
        self._kernel: torch.Tensor = sinc.kernel  # (outputs per step, 1, taps)
        self._matrix = np.ascontiguousarray(self._kernel[:, 0, :].numpy().T)  # (taps, outputs per step)
        self._padding = sinc.width  # zeros before the signal; width + step after it
        common = gcd(self.rate, self.target)
        self._step = self.rate // common  # input samples between two kernel positions
        self._outputs = self.target // common  # output samples at each position
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next block starts a new signal."""
        if self.rate == self.target:
            return
        self._pending = np.zeros(self._padding, dtype=np.float32)  # input the next position starts at
        self._received = 0
        self._emitted = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        block = as_float32(np.asarray(block))
        if self.rate == self.target:
            return block
        self._received += block.size
        return self._convolve(block)

    def flush(self) -> np.ndarray:
        """The samples still held back at the end of the signal, as the whole-signal resampler
        ends it (zero padding, then cut to ceil(n × target / rate) samples in all); the next block
        starts a new signal."""
        if self.rate == self.target:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self._outputs // self._step)
        out = self._convolve(np.zeros(self._padding + self._step, dtype=np.float32))
        out = out[: max(0, total - (self._emitted - out.size))]
        self.reset()
        return out

    def _convolve(self, block: np.ndarray) -> np.ndarray:
        """Every kernel position that the input now covers, in output order."""
        import torch

        self._pending = np.concatenate([self._pending, block])
        taps = self._kernel.shape[-1]
        if self._pending.size < taps:
            return np.zeros(0, dtype=np.float32)
        positions = (self._pending.size - taps) // self._step + 1
        covered = self._pending[: (positions - 1) * self._step + taps]
        if positions * self._matrix.size <= SMALL_BLOCK_MACS:  # a live block: numpy costs less than a torch call
            windows = np.lib.stride_tricks.sliding_window_view(covered, taps)[:: self._step]
            out = (windows @ self._matrix).reshape(-1)
        else:
            with torch.inference_mode():
                frames = torch.nn.functional.conv1d(_tensor(covered)[None, None], self._kernel, stride=self._step)
            out = frames[0].T.reshape(-1).numpy()
        self._pending = self._pending[positions * self._step :]
        self._emitted += out.size
        return out


def _tensor(samples: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing memory with ``samples`` where numpy allows it."""
    import torch

    samples = np.ascontiguousarray(samples)
    return torch.from_numpy(samples if samples.flags.writeable else samples.copy())
