"""`voicechat devices`, `voicechat vad` and `voicechat mic-test` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.speech import RATE, question, scene
from voicechat.audio.files import read_audio, write_wav
from voicechat.cli import main


def test_vad_command_lists_the_utterances_of_a_recording_as_json(tmp_path, capsys):
    recording = scene([1.0, question("en"), 1.5, question("zh"), 2.0], noise_dbfs=-45.0)
    path = tmp_path / "two-questions.wav"
    write_wav(path, recording.samples, RATE)
    assert main(["vad", str(path), "--preset", "aggressive", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["trailing_silence_ms"] == 400
    kept = [u for u in report["utterances"] if u["kept"]]
    assert len(kept) >= 2
    assert kept[0]["start"] == pytest.approx(recording.speech[0][0], abs=0.05)
    assert kept[-1]["end"] == pytest.approx(recording.speech[1][1], abs=0.1)


@pytest.mark.slow
def test_vad_command_reports_when_the_end_of_turn_model_decided(tmp_path, capsys, smart_turn_path):
    from tests.support.piper_speech import say

    recording = scene([1.0, say("How many hours of sleep does a teenager need every night?"), 2.0])
    path = tmp_path / "question.wav"
    write_wav(path, recording.samples, RATE)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  turn:\n    source: {smart_turn_path}\n")
    assert main(["--config", str(config), "vad", str(path), "--turn", "smart", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["turn"] == "smart"
    utterance, = report["utterances"]
    assert utterance["reason"] == "complete"
    assert utterance["model_ms"] > 0  # the model's compute is part of when it decided
    decided_on_the_audio = utterance["decided"] - utterance["model_ms"] / 1000
    assert utterance["end"] < decided_on_the_audio < recording.speech[0][1] + report["settings"]["trailing_silence_ms"] / 1000


def test_vad_command_without_the_turn_model_warns_once_and_ends_turns_after_silence(tmp_path, capsys):
    recording = scene([1.0, question("en"), 2.0])
    path = tmp_path / "question.wav"
    write_wav(path, recording.samples, RATE)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  turn:\n    source: {tmp_path / 'absent.onnx'}\n")
    assert main(["--config", str(config), "vad", str(path), "--turn", "smart", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["settings"]["turn"] == "silence"
    assert captured.err.count("\n") == 1 and "ending turns after silence instead" in captured.err


def test_vad_command_on_a_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["vad", str(tmp_path / "nothing.wav")]) == 2
    assert "no such audio file" in capsys.readouterr().err


@pytest.mark.audio
def test_devices_command_marks_the_default_devices(pulse, capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "Input devices" in out and "Output devices" in out
    assert any(line.lstrip("│ ").startswith("*") and "default" in line for line in out.splitlines())


@pytest.mark.audio
@pytest.mark.slow
def test_mic_test_records_what_the_microphone_heard(pulse, tmp_path, capsys):
    spoken = question("en")
    pulse.play(np.concatenate([spoken, np.zeros(RATE, np.float32)]), RATE)
    path = tmp_path / "heard.wav"
    assert main(["mic-test", "--seconds", "3", "--record", str(path)]) == 0
    heard, rate = read_audio(path)
    assert rate == RATE and heard.shape[0] > 2 * RATE
    assert np.abs(heard).max() > 0.1  # the spoken question reached the recording
