"""Resampling: whole signals exactly as torchaudio's sinc resampler (what the GLM-4-Voice reference
applies before its speech tokenizer), and streams block by block with the same kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from tests.support.speech_tokenizer import speech_like
from voicechat.audio.resample import StreamResampler, resample, to_model_input

torch.set_num_threads(1)

# the tokenizer's inputs, and decoder audio (22.05 kHz) to common device rates
PAIRS = [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000), (22050, 48000), (22050, 44100)]


def torchaudio_resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    return torchaudio.functional.resample(torch.from_numpy(samples), rate, target).numpy()


def streamed(resampler: StreamResampler, signal: np.ndarray, rng: np.random.Generator, largest: int) -> np.ndarray:
    blocks, position = [], 0
    while position < signal.size:
        size = int(rng.integers(1, largest))
        blocks.append(resampler.process(signal[position : position + size]))
        position += size
    return np.concatenate(blocks + [resampler.flush()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_a_recording_is_resampled_to_16_khz_exactly_as_torchaudio_does(rate: int) -> None:
    recording = speech_like(3.0, seed=rate, rate=rate)
    ours = to_model_input(recording, rate)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torchaudio_resample(recording, rate, 16000))


def test_16_bit_samples_are_scaled_before_resampling() -> None:
    pcm = np.round(speech_like(1.0, seed=1, rate=44100) * 32767).astype(np.int16)
    expected = torchaudio_resample(pcm.astype(np.float32) / 32768, 44100, 16000)
    np.testing.assert_array_equal(resample(pcm, 44100, 16000), expected)


@pytest.mark.parametrize(("rate", "target"), PAIRS)
def test_blocks_of_any_size_resample_like_the_whole_signal_edges_included(rate: int, target: int) -> None:
    rng = np.random.default_rng(rate + target)
    signal = speech_like(1.3, seed=2, rate=rate)
    whole = resample(signal, rate, target)
    resampler = StreamResampler(rate, target)
    for largest in (3, 300, 5000):  # blocks shorter than the kernel, about as long, much longer
        stream = streamed(resampler, signal, rng, largest)
        assert stream.shape == whole.shape
        # the same dot products; convolutions over differently cut inputs round differently
        np.testing.assert_allclose(stream, whole, rtol=0, atol=1e-6)


def test_flush_ends_the_signal_and_the_next_block_starts_a_new_one() -> None:
    signal = speech_like(0.7, seed=3, rate=48000)
    resampler = StreamResampler(48000, 16000)
    rng = np.random.default_rng(0)
    first = streamed(resampler, signal, rng, 2000)
    assert np.array_equal(streamed(resampler, signal, rng, 2000), first)
    resampler.process(signal[:1000])
    resampler.reset()
    assert np.array_equal(streamed(resampler, signal, rng, 2000), first)


def test_a_signal_shorter_than_the_kernel_still_gives_every_sample() -> None:
    for length in (1, 2, 7, 40):
        signal = np.linspace(-0.5, 0.5, length, dtype=np.float32)
        resampler = StreamResampler(44100, 16000)
        stream = np.concatenate([resampler.process(signal), resampler.flush()])
        np.testing.assert_allclose(stream, torchaudio_resample(signal, 44100, 16000), rtol=0, atol=1e-6)


def test_equal_rates_pass_the_samples_through() -> None:
    signal = speech_like(0.2, seed=4)
    resampler = StreamResampler(16000, 16000)
    assert np.array_equal(resampler.process(signal), signal) and resampler.flush().size == 0
    assert np.array_equal(resample(signal, 16000, 16000), signal)
