"""Resampling a stream block by block."""

from __future__ import annotations

import numpy as np

from voicechat.audio.resample import StreamResampler, resample


def test_blocks_of_any_size_resample_exactly_like_the_whole_signal():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(30000).astype(np.float32)
    for rate, target in [(44100, 16000), (48000, 16000), (22050, 48000)]:
        resampler = StreamResampler(rate, target)
        blocks, position = [], 0
        while position < signal.size:
            size = int(rng.integers(1, 3000))
            blocks.append(resampler.process(signal[position:position + size]))
            position += size
        streamed = np.concatenate(blocks + [resampler.flush()])
        np.testing.assert_allclose(streamed, resample(signal, rate, target), atol=1e-5)
