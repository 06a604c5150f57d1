"""GLM-4 text tokenizer read from the checkpoint's files; streaming detokenisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voicechat.errors import ModelError
from voicechat.glm.text_tokenizer import GlmTextTokenizer, StreamingDetokenizer

ENGLISH = "The library opens at nine in the morning; it's closed on Sundays (mostly)!\n  Tabs\tand 123456 digits."
CHINESE = "图书馆在工作日早上九点开门。龘靐齉爩，鱻麤。"


@pytest.fixture(scope="module")
def tokenizer(tiny_lm: Path) -> GlmTextTokenizer:
    return GlmTextTokenizer.from_pretrained(tiny_lm)


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, ENGLISH + CHINESE, "", " ", "emoji 🎙️ ok"])
def test_text_round_trips_exactly(tokenizer: GlmTextTokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_learned_merges_make_common_words_single_tokens(tokenizer: GlmTextTokenizer) -> None:
    assert len(tokenizer.encode(" library")) == 1
    assert len(tokenizer.encode("图书馆")) < len("图书馆".encode())


def test_special_and_audio_tokens_encode_to_their_ids(tokenizer: GlmTextTokenizer) -> None:
    special = tokenizer.special
    ids = tokenizer.encode_with_special("<|user|>\n<|begin_of_audio|><|audio_0|><|audio_16383|><|end_of_audio|>")
    assert ids == [special.user, *tokenizer.encode("\n"), special.begin_of_audio, special.audio_offset,
                   special.audio_offset + 16383, special.end_of_audio]
    assert tokenizer.decode(ids) == "<|user|>\n<|begin_of_audio|><|audio_0|><|audio_16383|><|end_of_audio|>"


def test_marker_strings_in_plain_text_stay_text(tokenizer: GlmTextTokenizer) -> None:
    ids = tokenizer.encode("a passage that says <|user|> and <|audio_3|>")
    assert not any(tokenizer.is_special(i) for i in ids)
    assert tokenizer.decode(ids) == "a passage that says <|user|> and <|audio_3|>"


def test_unknown_marker_shapes_stay_text(tokenizer: GlmTextTokenizer) -> None:
    ids = tokenizer.encode_with_special("<|audio_99999|><|nobody|>")
    assert not any(tokenizer.is_special(i) for i in ids)


def test_special_ids_are_read_from_the_files_not_assumed(tiny_lm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "moved"
    shutil.copytree(tiny_lm, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    moved = {}
    for token_id, entry in config["added_tokens_decoder"].items():
        shift = 500 if entry["content"].startswith("<|audio_") else 0
        moved[str(int(token_id) + shift)] = entry
    config["added_tokens_decoder"] = moved
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    original = GlmTextTokenizer.from_pretrained(tiny_lm).special
    shifted = GlmTextTokenizer.from_pretrained(folder).special
    assert shifted.audio_offset == original.audio_offset + 500
    assert shifted.user == original.user
    assert shifted.audio_count == 16384


def test_tokenizer_without_audio_tokens_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "noaudio"
    shutil.copytree(tiny_lm, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if not v["content"].startswith("<|audio_")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="audio"):
        GlmTextTokenizer.from_pretrained(folder)


def test_missing_or_corrupt_vocabulary_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_lm, folder)
    (folder / "tokenizer.model").write_text("not base64 at all\n")
    with pytest.raises(ModelError):
        GlmTextTokenizer.from_pretrained(folder)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ModelError, match="cannot read"):
        GlmTextTokenizer.from_pretrained(folder)


def test_audio_ids_wrap_speech_codes_and_reject_out_of_range(tokenizer: GlmTextTokenizer) -> None:
    special = tokenizer.special
    assert tokenizer.audio_ids([0, 5]) == [special.begin_of_audio, special.audio_offset,
                                           special.audio_offset + 5, special.end_of_audio]
    with pytest.raises(ModelError):
        tokenizer.audio_ids([16384])


def test_streaming_never_shows_half_a_character_and_loses_nothing(tokenizer: GlmTextTokenizer) -> None:
    text = ENGLISH + CHINESE
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.encode()) // 4  # rare characters are split into byte tokens
    detokenizer = StreamingDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # some tokens held back bytes of an unfinished character


def test_streaming_flush_marks_an_unfinished_character(tokenizer: GlmTextTokenizer) -> None:
    first_byte = tokenizer.encode("龘")[0]
    detokenizer = StreamingDetokenizer(tokenizer)
    assert detokenizer.push(first_byte) == ""
    assert detokenizer.flush() == "\ufffd"
