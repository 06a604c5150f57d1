"""`voicechat tokenize AUDIO [--json]` on a generated tiny tokenizer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tests.support.speech_tokenizer import RATE, speech_like, tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401
from voicechat import cli
from voicechat.audio.files import write_wav
from voicechat.commands import tokenize
from voicechat.config import load_config
from voicechat.errors import AudioError, ModelError


def run_command(argv: list[str], config_path: Path | None) -> int:
    parser = argparse.ArgumentParser()
    tokenize.add_arguments(parser)
    return tokenize.run(parser.parse_args(argv), load_config(config_path))


@pytest.fixture
def config_path(tiny_tokenizer_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"speech_tokenizer": {"source": str(tiny_tokenizer_dir), "device": "cpu"}}}))
    return path


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "question.wav"
    write_wav(path, speech_like(2.0, seed=30, rate=22050), 22050)
    return path


def test_tokenize_is_a_registered_command() -> None:
    assert cli.COMMANDS["tokenize"] == "tokenize"
    assert tokenize.HELP


def test_prints_the_tokens_and_the_time_taken(config_path: Path, wav: Path, tiny_tokenizer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from voicechat.audio.files import read_audio

    assert run_command([str(wav)], config_path) == 0
    tokens_line, summary = capsys.readouterr().out.strip().splitlines()
    tokens = [int(t) for t in tokens_line.split()]
    assert tokens == tiny_tokenizer.tokenize(*read_audio(wav))
    assert summary.startswith("25 tokens from 2.00 s of audio in ") and " ms (model loaded in " in summary


def test_json_output_is_one_object(config_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command([str(wav), "--json"], config_path) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["tokens"]) == 25
    assert result["audio_seconds"] == 2.0
    assert result["tokenize_seconds"] > 0 and result["load_seconds"] > 0
    assert (result["device"], result["dtype"]) == ("cpu", "float32")


def test_unreadable_audio_and_missing_model_are_user_errors(config_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        run_command([str(text)], config_path)
    wav = tmp_path / "a.wav"
    write_wav(wav, speech_like(0.5), RATE)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"models": {"speech_tokenizer": str(tmp_path / "nowhere")}}))
    with pytest.raises(ModelError, match="is not a local folder"):
        run_command([str(wav)], missing)
