"""Decoding on a static key/value cache computes what the dynamic cache computes."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from voicechat.glm.lm.static_decode import StaticDecoder
from voicechat.testing import lm

PROMPT = list(range(100, 160))
REPLY = [5, 900, 18000, 7, 12, 18495]


@pytest.fixture(scope="module")
def model():
    return lm.build("tiny", "cpu", "float32", seed=2).model


def dynamic_logits(model, prompt: list[int], reply: list[int]) -> list[torch.Tensor]:
    cache = DynamicCache()
    rows = []
    with torch.inference_mode():
        for ids in [prompt, *[[t] for t in reply]]:
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
            rows.append(out.logits[0, -1])
    return rows


def test_static_cache_gives_the_dynamic_cache_logits_turn_after_turn(model) -> None:
    expected = dynamic_logits(model, PROMPT, REPLY)
    static = StaticDecoder(model, max_tokens=96)
    static.prepare()
    for _ in range(2):  # the second sequence must not see the first one's keys
        static.reset()
        got = [static.prefill(PROMPT)] + [static.step(t) for t in REPLY]
        for ours, theirs in zip(got, expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert static.length == len(PROMPT) + len(REPLY)


def test_a_prompt_longer_than_the_static_cache_is_refused(model) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        StaticDecoder(model, max_tokens=32).prefill(PROMPT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_graphed_steps_need_a_gpu(model) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(model, max_tokens=96, mode="cuda-graph")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["cuda-graph", "compile"])
def test_graphed_steps_give_the_eager_static_logits(mode: str) -> None:
    gpu_model = lm.build("tiny", "cuda", "float32", seed=2).model
    runs = []
    for step_mode in ("eager", mode):
        static = StaticDecoder(gpu_model, max_tokens=96, mode=step_mode)
        static.prepare()
        runs.append([static.prefill(PROMPT)] + [static.step(t) for t in REPLY])
    for ours, theirs in zip(runs[1], runs[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

