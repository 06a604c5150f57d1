"""Where the decoder's randomness comes from: always local torch.Generators, never the global RNG.

Two sources with the same three methods (the flow solver's starting noise, the sine source's start
phases and its additive noise):

- ``ReplyNoise``: random access by absolute position. Frame f (or sample s) of a reply gets the same
  numbers whether the reply is decoded in one pass or chunk by chunk, so streaming can be compared
  with a whole decode. Numbers are drawn per fixed block from a generator seeded by (seed, block).
- ``ReferenceNoise``: the reference implementation's draws for one whole-utterance decode, in its
  order from one generator (noise for all frames, then phases, then the sine noise for all samples),
  so that our whole decode reproduces its output given the same seed.
"""

from __future__ import annotations

import math

import torch

_FLOW, _PHASES, _SINE = 0, 1, 2
REFERENCE_SEED = 42  # the reference's flow seeds torch with 42 before every decode


def _uniform_phases(generator: torch.Generator, harmonics: int) -> torch.Tensor:
    low, high = torch.tensor(-math.pi), torch.tensor(math.pi)
    return low + torch.rand((1, harmonics, 1), generator=generator) * (high - low)


class ReplyNoise:
    def __init__(self, seed: int, mel_bins: int, harmonics: int, samples_per_frame: int,
                 block_frames: int = 64):
        self.seed = seed
        self.mel_bins = mel_bins
        self.harmonics = harmonics
        self.block_frames = block_frames
        self.block_samples = block_frames * samples_per_frame
        self._phases: torch.Tensor | None = None

    def _generator(self, kind: int, block: int) -> torch.Generator:
        # hashing a tuple of ints is stable across runs (only str/bytes hashing is randomised)
        return torch.Generator().manual_seed(hash((self.seed, kind, block)) & 0x7FFF_FFFF_FFFF_FFFF)

    def _span(self, kind: int, rows: int, block_len: int, start: int, count: int) -> torch.Tensor:
        if count <= 0:
            return torch.zeros(rows, 0)
        first, last = start // block_len, (start + count - 1) // block_len
        blocks = [torch.randn((rows, block_len), generator=self._generator(kind, b)) for b in range(first, last + 1)]
        joined = torch.cat(blocks, dim=1)
        offset = start - first * block_len
        return joined[:, offset:offset + count]

    def flow(self, start_frame: int, count: int) -> torch.Tensor:
        """(1, mel_bins, count) standard normal for mel frames start_frame..start_frame+count-1."""
        return self._span(_FLOW, self.mel_bins, self.block_frames, start_frame, count).unsqueeze(0)

    def phases(self) -> torch.Tensor:
        """(harmonics,) start phases in [-pi, pi), the same for the whole reply."""
        if self._phases is None:
            self._phases = _uniform_phases(self._generator(_PHASES, 0), self.harmonics)[0, :, 0]
        return self._phases

    def sine(self, start_sample: int, count: int) -> torch.Tensor:
        """(harmonics, count) standard normal for samples start_sample..start_sample+count-1."""
        return self._span(_SINE, self.harmonics, self.block_samples, start_sample, count)


class ReferenceNoise:
    """One whole decode only: call flow(0, T), then phases(), then sine(0, L), as the reference draws."""

    def __init__(self, seed: int, mel_bins: int, harmonics: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.mel_bins = mel_bins
        self.harmonics = harmonics

    def flow(self, start_frame: int, count: int) -> torch.Tensor:
        assert start_frame == 0, "reference noise covers one whole decode"
        return torch.randn((1, self.mel_bins, count), generator=self.generator)

    def phases(self) -> torch.Tensor:
        return _uniform_phases(self.generator, self.harmonics)[0, :, 0]

    def sine(self, start_sample: int, count: int) -> torch.Tensor:
        assert start_sample == 0, "reference noise covers one whole decode"
        return torch.randn((1, self.harmonics, count), generator=self.generator)[0]
