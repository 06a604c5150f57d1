"""The decoder's warm-up and CUDA graphs change when work is done, never the audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicechat.testing import decoder

TOKENS = [(11 * n) % 16384 for n in range(40)]


def reply(speech_decoder, tokens: list[int] = TOKENS) -> np.ndarray:
    with speech_decoder.session() as session:
        return np.concatenate([session.push(tokens), session.finish()])


def test_decoder_warm_up_leaves_the_next_reply_as_it_would_have_been() -> None:
    speech_decoder = decoder.build("tiny", "cpu", "float32", seed=1)
    before = reply(speech_decoder)
    speech_decoder.warm_up()
    assert np.array_equal(reply(speech_decoder), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_graphs_for_the_flow_need_a_gpu() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        decoder.build("tiny", "cpu").use_cuda_graphs(True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_flow_gives_the_eager_audio() -> None:
    speech_decoder = decoder.build("tiny", "cuda", "float32", seed=1)
    audio = []
    for graphs in (False, True):
        speech_decoder.use_cuda_graphs(graphs)
        speech_decoder.warm_up()  # with graphs: captures the chunk shapes, then freezes
        audio.append(reply(speech_decoder))
    np.testing.assert_allclose(audio[1], audio[0], atol=1e-4)
    assert speech_decoder.flow.decoder.graphs.shapes > 0
