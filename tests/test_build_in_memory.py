"""Models built directly in memory (for GPU benchmarks) are the models the generator writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from voicechat.glm.lm.checkpoint import load_glm
from voicechat.testing import decoder, lm, speech_tokenizer


def test_lm_built_in_memory_has_the_layout_the_loader_gives_the_written_checkpoint(tiny_lm: Path) -> None:
    built = lm.build("tiny", "cpu", "float32").model.state_dict()
    loaded = load_glm(tiny_lm, device="cpu", dtype="float32").model.state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in loaded.items()}
    assert json.loads((tiny_lm / "config.json").read_text()) == lm.chatglm_config(lm.SHAPES["tiny"])


def test_lm_built_from_one_seed_has_the_same_weights_in_float32_and_bfloat16() -> None:
    full = lm.build("tiny", "cpu", torch.float32, seed=5).model.state_dict()
    half = lm.build("tiny", "cpu", torch.bfloat16, seed=5).model.state_dict()
    for name, tensor in half.items():
        assert torch.equal(tensor.float(), full[name]), name


def test_full_size_lm_config_has_every_published_field(shared_reference: Path) -> None:
    published = json.loads((shared_reference / "glm-4-voice-9b" / "config.partial.json").read_text())
    ours = lm.chatglm_config(lm.SHAPES["full"])
    assert {key: ours.get(key) for key in published} == published


def test_decoder_built_in_memory_is_the_written_one(tiny_decoder_folder: Path) -> None:
    from voicechat.glm.decoder import SpeechDecoder

    written = SpeechDecoder.from_pretrained(tiny_decoder_folder, device="cpu")
    built = decoder.build("tiny", "cpu", "float32", seed=0)
    for ours, theirs in ((built.flow, written.flow), (built.hift, written.hift)):
        expected = theirs.state_dict()
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, expected[name]), name


def test_speech_tokenizer_built_in_memory_gives_the_written_ones_tokens(tmp_path: Path) -> None:
    from voicechat.glm.speech_tokenizer import SpeechTokenizer

    folder = Path(speech_tokenizer.write(tmp_path, "tiny", seed=3)["models"]["speech_tokenizer"]["source"])
    written = SpeechTokenizer.from_pretrained(folder, device="cpu")
    built = speech_tokenizer.build("tiny", "cpu", "float32", seed=3)
    audio = speech_tokenizer.synthetic_speech(2.0, 16000)
    assert built.tokenize(audio, 16000) == written.tokenize(audio, 16000)

