"""`voicechat tokenize AUDIO [--json]` on a generated tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.speech_tokenizer import RATE, speech_like
from voicechat.audio.files import read_audio, write_wav
from voicechat.cli import COMMANDS, main


@pytest.fixture
def config_path(tiny_tokenizer_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    models = {"speech_tokenizer": {"source": str(tiny_tokenizer_dir), "device": "cpu"}}
    path.write_text(yaml.safe_dump({"models": models, "offline": True}))
    return path


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "question.wav"
    write_wav(path, speech_like(2.0, seed=30, rate=22050), 22050)
    return path


def test_tokenize_is_a_registered_command() -> None:
    assert COMMANDS["tokenize"] == "tokenize"


def test_prints_the_tokens_and_the_time_taken(config_path: Path, wav: Path, tiny_tokenizer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config_path), "tokenize", str(wav)]) == 0
    tokens_line, summary = capsys.readouterr().out.strip().splitlines()
    assert [int(t) for t in tokens_line.split()] == tiny_tokenizer.tokenize(*read_audio(wav))
    assert summary.startswith("25 tokens from 2.00 s of audio in ") and " ms (model loaded in " in summary


def test_json_output_is_one_object(config_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config_path), "tokenize", str(wav), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["tokens"]) == 25
    assert result["audio_seconds"] == 2.0
    assert result["tokenize_seconds"] > 0 and result["load_seconds"] > 0
    assert (result["device"], result["dtype"]) == ("cpu", "float32")


def test_unreadable_audio_is_one_line_on_stderr_with_exit_2(config_path: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert main(["--config", str(config_path), "tokenize", str(text)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("voicechat: error: ") and "not a readable audio file" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_missing_model_folder_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "a.wav"
    write_wav(wav, speech_like(0.5), RATE)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"models": {"speech_tokenizer": str(tmp_path / "nowhere")}}))
    assert main(["--config", str(config), "tokenize", str(wav)]) == 2
    assert "speech tokenizer" in capsys.readouterr().err
