"""Blocks of the decoder checked against the reference's equations, written out here independently."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from voicechat.glm.decoder.config import EstimatorConfig, HiftConfig, load_decoder_config
from voicechat.glm.decoder.flow import (BlockRelPositionAttention, ConditionalCFM, ConditionalDecoder,
                                        block_causal_mask, relative_position_encoding)
from voicechat.glm.decoder.hift import HiFTGenerator, sine_waves
from voicechat.testing.decoder import config_text


def _randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_block_causal_mask_is_the_reference_grid_mask() -> None:
    length, block = 23, 10
    for i in range(length):
        for j in range(length):
            same_block = i // block == j // block
            assert bool(block_causal_mask(length, block, torch.device("cpu"))[i, j]) == (j <= i or same_block)


def test_relative_position_attention_follows_the_transformer_xl_equation() -> None:
    dim, heads, length, block = 8, 2, 7, 3
    attention = BlockRelPositionAttention(dim, heads).eval()
    _randomise(attention, 1)
    x = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(2))
    got = attention(x, relative_position_encoding(length, dim, x.dtype, x.device),
                    block_causal_mask(length, block, x.device))

    def sinusoid(distance: int) -> torch.Tensor:  # pe[2k] = sin(r / 10000^(2k/d)), pe[2k+1] = cos(...)
        out = torch.zeros(dim)
        for k in range(0, dim, 2):
            out[k] = math.sin(distance / 10000 ** (k / dim))
            out[k + 1] = math.cos(distance / 10000 ** (k / dim))
        return out

    a, dk = attention, dim // heads
    q, k, v = a.linear_q(x[0]), a.linear_k(x[0]), a.linear_v(x[0])
    expected = torch.zeros(length, dim)
    for h in range(heads):
        cols = slice(h * dk, (h + 1) * dk)
        for i in range(length):
            scores = []
            for j in range(length):
                p = a.linear_pos(sinusoid(i - j))[cols]
                score = ((q[i, cols] + a.pos_bias_u[h]) @ k[j, cols] + (q[i, cols] + a.pos_bias_v[h]) @ p) / math.sqrt(dk)
                visible = j < (i // block + 1) * block
                scores.append(score if visible else torch.tensor(float("-inf")))
            weights = torch.softmax(torch.stack(scores), dim=0)
            expected[i, cols] = weights @ v[:, cols]
    expected = a.linear_out(expected)
    assert torch.allclose(got[0], expected, atol=1e-5)


HIFT = HiftConfig(in_channels=80, base_channels=16, nb_harmonics=8, sampling_rate=22050, nsf_alpha=0.1,
                  nsf_sigma=0.003, nsf_voiced_threshold=10, upsample_rates=(8, 8), upsample_kernel_sizes=(16, 16),
                  n_fft=16, hop_len=4, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                  source_resblock_kernel_sizes=(7, 11), source_resblock_dilation_sizes=((1,), (1,)),
                  lrelu_slope=0.1, audio_limit=0.99, f0_cond_channels=8, f0_num_class=1)


def _reference_sine_source(f0: torch.Tensor, phases: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SineGen as published: float32 cumulative phase per harmonic, unvoiced samples keep noise only."""
    f0_up = f0.repeat_interleave(256).unsqueeze(0)  # nearest upsampling to the sample rate
    harmonics = torch.cat([f0_up * (i + 1) / 22050 for i in range(9)])
    theta = 2 * np.pi * (torch.cumsum(harmonics, dim=-1) % 1)
    phases = phases.clone()
    phases[0] = 0
    sines = 0.1 * torch.sin(theta + phases.unsqueeze(1))
    uv = (f0_up > 10).float()
    amplitude = uv * 0.003 + (1 - uv) * 0.1 / 3
    return sines * uv + amplitude * noise


def test_sine_source_follows_the_reference_and_continues_across_pieces() -> None:
    generator = torch.Generator().manual_seed(3)
    f0 = torch.rand(24, generator=generator) * 300
    f0[5:8] = 0  # an unvoiced stretch
    phases = torch.rand(9, generator=generator) * 2 * math.pi - math.pi
    noise = torch.randn(9, 24 * 256, generator=generator)
    whole, _ = sine_waves(f0, HIFT, 0.0, phases, noise)
    assert torch.allclose(whole, _reference_sine_source(f0, phases, noise), atol=1e-4)
    first, carried = sine_waves(f0[:10], HIFT, 0.0, phases, noise[:, :2560])
    second, _ = sine_waves(f0[10:], HIFT, carried, phases, noise[:, 2560:])
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-5)


def test_istft_head_is_windowed_overlap_add_of_inverse_dfts() -> None:
    hift = HiFTGenerator(HIFT).eval()
    generator = torch.Generator().manual_seed(4)
    frames, n_fft, hop = 12, 16, 4
    magnitude = torch.rand(1, 9, frames, generator=generator) * 2
    phase = (torch.rand(1, 9, frames, generator=generator) - 0.5) * 6
    got = hift._istft(magnitude, phase)[0]

    window = torch.tensor([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    length = n_fft + hop * (frames - 1)
    signal, envelope = torch.zeros(length, dtype=torch.float64), torch.zeros(length, dtype=torch.float64)
    for t in range(frames):
        spectrum = (magnitude[0, :, t] * torch.exp(1j * phase[0, :, t])).to(torch.complex128)
        piece = torch.fft.irfft(spectrum, n=n_fft) * window
        signal[t * hop:t * hop + n_fft] += piece
        envelope[t * hop:t * hop + n_fft] += window.double() ** 2
    expected = (signal / envelope)[n_fft // 2:length - n_fft // 2]  # centred frames: trim half a window
    assert got.shape == expected.shape == ((frames - 1) * hop,)
    assert torch.allclose(got.double(), expected, atol=1e-5)


class _LinearVelocity(torch.nn.Module):
    """Test double for the U-Net: v = -x + mu + spks + cond, so guidance and schedule are visible."""

    def forward(self, x, mu, t, spks, cond):
        return -x + mu + spks.unsqueeze(-1) + cond + t


def test_euler_solver_with_guidance_follows_the_reference_loop(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(config_text("tiny"))
    solver = ConditionalCFM(load_decoder_config(tmp_path / "config.yaml").flow)
    solver.estimator = _LinearVelocity()
    generator = torch.Generator().manual_seed(5)
    noise, mu, cond = (torch.randn(1, 2, 6, generator=generator) for _ in range(3))
    spks = torch.randn(1, 2, generator=generator)
    got = solver(noise, mu, spks, cond)

    x, rate = noise.clone(), 0.7
    t_span = [1 - math.cos(i / 10 * 0.5 * math.pi) for i in range(11)]
    for step in range(10):
        t = t_span[step]
        conditional = -x + mu + spks.unsqueeze(-1) + cond + t
        unconditional = -x + t
        x = x + (t_span[step + 1] - t) * ((1 + rate) * conditional - rate * unconditional)
    assert torch.allclose(got, x, atol=1e-5)


@pytest.mark.parametrize("length", [1, 7, 68, 69])
def test_estimator_keeps_length_and_treats_batch_items_independently(length: int) -> None:
    config = EstimatorConfig(in_channels=32, out_channels=8, channels=(16, 16), attention_head_dim=4,
                             n_blocks=1, num_mid_blocks=1, num_heads=2)
    estimator = ConditionalDecoder(config).eval()
    _randomise(estimator, 6)
    generator = torch.Generator().manual_seed(7)
    x, mu, cond = (torch.randn(2, 8, length, generator=generator) for _ in range(3))
    spks, t = torch.randn(2, 8, generator=generator), torch.tensor(0.3)
    with torch.no_grad():
        both = estimator(x, mu, t, spks, cond)
        first = estimator(x[:1], mu[:1], t, spks[:1], cond[:1])
    assert both.shape == (2, 8, length)
    assert torch.allclose(both[:1], first, atol=1e-5)
