"""`voicechat ask`: one headless turn through the engine, and the inputs it refuses up front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.speech import vowels
from voicechat.audio.files import check_output, read_audio, read_speech, write_wav
from voicechat.cli import main
from voicechat.errors import AudioError


def _question(path: Path, seconds: float = 1.0) -> Path:
    write_wav(path, vowels(seconds), 16000)  # `ask` answers only a recording the endpointer hears speech in
    return path


@pytest.mark.slow
def test_spoken_question_prints_the_reply_and_writes_its_audio(tmp_path: Path, tiny_models_dir: Path,
                                                                capsys) -> None:
    question, reply = _question(tmp_path / "question.wav"), tmp_path / "reply.wav"
    code = main(["--config", str(tiny_models_dir / "config.yaml"), "--rag", "off", "ask", str(question),
                 "--out", str(reply), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["problems"] == []
    assert printed["timings"]["tokenize_ms"] > 0 and printed["timings"]["first_heard_ms"] is None  # no device
    samples, rate = read_audio(reply)
    assert samples.shape[0] / rate == pytest.approx(printed["reply_audio_seconds"], abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["ask", "--text", "  "], "--text is empty"),
    (["ask", "{question}", "--out", "{question}"], "is also the input"),
    (["ask", "--text", "hi", "--out", "{tmp}/missing/reply.wav"], "does not exist"),
    (["ask", "--text", "hi", "--out", "{tmp}"], "is a folder"),
    (["ask", "{tmp}"], "is a folder, not an audio file"),
    (["ask", "{empty}"], "the recording is empty"),
    (["search", "   "], "the question TEXT is empty"),
    (["chat"], "needs a terminal"),
    (["--knowledge", "{question}", "ask", "--text", "hi"], "question.wav: is a file"),
    (["--knowledge", "{tmp}/notes", "ask", "--text", "hi"], "notes: does not exist"),
])
def test_bad_inputs_are_refused_in_one_line_before_any_model_loads(tmp_path: Path, capsys, argv: list[str],
                                                                   message: str) -> None:
    question = _question(tmp_path / "question.wav")
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32), 16000)
    argv = [a.format(tmp=tmp_path, question=question, empty=empty) for a in argv]
    config = tmp_path / "config.yaml"
    config.write_text("offline: true\n")  # the default models, none of which is here
    assert main(["--config", str(config), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert read_audio(question)[0].size == 16000  # the input is untouched


def test_question_longer_than_the_microphone_takes_is_refused_before_any_model_loads(tmp_path: Path,
                                                                                  capsys) -> None:
    question = _question(tmp_path / "question.wav", seconds=31.0)
    config = tmp_path / "config.yaml"
    config.write_text("offline: true\n")  # the default models, none of which is here
    assert main(["--config", str(config), "ask", str(question)]) == 2
    err = capsys.readouterr().err
    assert "31.0 s is too long for a question (at most 30 s" in err and len(err.strip().splitlines()) == 1


def test_recordings_with_invalid_samples_are_refused(tmp_path: Path) -> None:
    import soundfile

    soundfile.write(str(tmp_path / "nan.wav"), np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="invalid samples"):
        read_speech(tmp_path / "nan.wav")
    assert read_speech(_question(tmp_path / "ok.wav", 0.5)).shape == (8000,)


def test_output_checks_and_unwritable_outputs(tmp_path: Path) -> None:
    check_output(tmp_path / "new.wav", tmp_path / "question.wav")  # a new file beside the input is fine
    with pytest.raises(AudioError, match="cannot write audio file"):
        write_wav(Path("/proc/voicechat-reply.wav"), np.zeros(10, np.float32), 16000)
    assert not Path("/proc/voicechat-reply.wav.part").exists()
