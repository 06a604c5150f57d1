"""`voicechat detokenize`: a token list in, a WAV of the right length out, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicechat.cli import main


@pytest.fixture()
def config_file(tiny_decoder_folder: Path, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"offline: true\nmodels:\n  decoder:\n    source: {tiny_decoder_folder}\n"
                    "decoder:\n  seed: 3\n")
    return path


@pytest.fixture()
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(list(range(500, 537))))
    return path


@pytest.mark.parametrize("mode", [[], ["--chunks", "5,10"], ["--whole"]])
def test_detokenize_writes_the_whole_reply(config_file: Path, tokens_file: Path, tmp_path: Path,
                                           mode: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.wav"
    assert main(["--config", str(config_file), "detokenize", str(tokens_file), "--out", str(out), *mode]) == 0
    info = soundfile.info(str(out))
    assert info.samplerate == 22050 and info.channels == 1
    assert info.frames == int(37 / 12.5 * 22050 / 256) * 256
    assert "37 speech tokens" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("[1, 2,", "not a JSON token list"),
    ('{"tokens": "abc"}', "expected a JSON list of integer speech token ids"),
    ("[1, 20000]", "speech token 20000 is outside the decoder's vocabulary"),
])
def test_bad_token_file_is_one_line_error(config_file: Path, tmp_path: Path, content: str, message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    assert main(["--config", str(config_file), "detokenize", str(path), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x.wav").exists()


def test_whole_decode_with_the_reference_noise_reproduces_the_reference_audio(
        shared_reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parity = shared_reference / "parity" / "decoder-tiny"  # the reference's decode of 57 tokens
    config = tmp_path / "config.yaml"
    config.write_text(f"offline: true\nmodels:\n  decoder:\n    source: {parity}\n    device: cpu\n")
    out = tmp_path / "reply.wav"
    command = ["--config", str(config), "detokenize", str(parity / "ref_tokens.json"), "--out", str(out), "--whole"]
    reference = np.load(parity / "ref_whole.npy")

    assert main([*command, "--reference-noise"]) == 0
    assert "with the reference's random numbers" in capsys.readouterr().out
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 22050 and audio.shape == reference.shape
    assert np.abs(audio - reference).max() <= 1e-4  # 16-bit samples: within a few quantisation steps

    assert main(command) == 0  # the reply's own noise: another rendering of the same tokens
    assert np.abs(soundfile.read(str(out), dtype="float32")[0] - reference).max() > 1e-2


def test_reference_noise_without_whole_is_one_line_error(config_file: Path, tokens_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.wav"
    assert main(["--config", str(config_file), "detokenize", str(tokens_file), "--out", str(out),
                 "--reference-noise"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reference-noise needs --whole" in err and "\n" not in err
    assert not out.exists()
