"""`voicechat eval` with bad arguments or files: one line on stderr, exit 2, before any model loads
and before anything is written to --out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voicechat.cli import main
from voicechat.evaluation.runner import RESULTS, RUN_INFO, check_run_info

DATA = Path(__file__).resolve().parent / "data" / "eval"
HOTPOT = str(DATA / "hotpot_small.json")
RGB = str(DATA / "rgb_small.jsonl")


@pytest.fixture
def config(tmp_path: Path) -> str:
    """A config without local models: anything that tried to load one would fail differently."""
    path = tmp_path / "config.yaml"
    path.write_text("offline: true\n", encoding="utf-8")
    return str(path)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("voicechat: error: ")
    return err


def _wav(path: Path) -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(8000, np.float32), 16000)
    return path


def test_out_that_is_a_file_is_refused(tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.txt"
    out.write_text("notes\n", encoding="utf-8")
    assert main(["--config", config, "eval", "rgb", RGB, "--synth", "--out", str(out)]) == 2
    assert f"--out {out} is a file; choose a folder" in _error(capsys)
    assert main(["--config", config, "eval", "synth", "rgb", RGB, "--out", str(out)]) == 2
    assert f"--out {out} is a file; choose a folder" in _error(capsys)
    assert main(["--config", config, "eval", "synth", "rgb", RGB, "--out", str(out / "speech")]) == 2
    assert f"is inside {out}, which is a file" in _error(capsys)
    assert out.read_text(encoding="utf-8") == "notes\n"


@pytest.mark.parametrize("top_k", ["0", "-2"])
def test_top_k_below_one_is_refused(tmp_path: Path, config: str, top_k: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--config", config, "eval", "rgb", RGB, "--synth", "--top-k", top_k, "--out", str(out)]) == 2
    assert f"--top-k must be at least 1, got {top_k}" in _error(capsys)
    assert not out.exists()


def test_limit_below_one_is_refused(tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--config", config, "eval", "hotpotqa", HOTPOT, "--synth", "--limit", "0", "--out", str(out)]) == 2
    assert "--limit must be at least 1, got 0" in _error(capsys)
    assert not out.exists()


def test_each_dataset_help_states_its_own_top_k_default(capsys: pytest.CaptureFixture[str]) -> None:
    for dataset, default in (("hotpotqa", 4), ("rgb", 2), ("folder", 4)):
        with pytest.raises(SystemExit):
            main(["eval", dataset, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"--top-k TOP_K passages retrieved (default: {default})" in help_text
        assert "global options: --config PATH" in help_text


def test_synth_help_explains_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "synth", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "data the questions file" in help_text
    assert "--limit LIMIT speak the first N questions" in help_text


def test_missing_audio_file_is_found_before_anything_runs(tmp_path: Path, config: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _wav(tmp_path / "q1.wav")
    manifest = tmp_path / "speech.jsonl"
    manifest.write_text('{"id": "q1", "audio": "q1.wav"}\n{"id": "q2", "audio": "q2.wav"}\n', encoding="utf-8")
    out = tmp_path / "run"
    assert main(["--config", config, "eval", "hotpotqa", HOTPOT, "--manifest", str(manifest), "--out", str(out)]) == 2
    assert f"question q2: no audio file {tmp_path / 'q2.wav'}" in _error(capsys)
    assert not out.exists()


def test_missing_knowledge_folder_is_found_before_anything_is_written(
        tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    questions = str(DATA / "knowledge_questions.jsonl")
    assert main(["--config", config, "eval", "folder", questions, "--synth", "--knowledge", str(tmp_path / "nodir"),
                 "--out", str(out)]) == 2
    assert f"--knowledge {tmp_path / 'nodir'}: does not exist" in _error(capsys)
    assert not out.exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n", encoding="utf-8")
    assert main(["--config", config, "--knowledge", str(a_file), "eval", "folder", questions, "--synth",
                 "--out", str(out)]) == 2
    assert f"--knowledge {a_file}: is a file" in _error(capsys)
    assert not out.exists()


def test_broken_speech_manifest_is_one_line_before_anything_is_written(
        tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "speech.jsonl"
    manifest.write_bytes(b'\xff\xfe{"id": "q1"}\n')
    out = tmp_path / "run"
    assert main(["--config", config, "eval", "hotpotqa", HOTPOT, "--manifest", str(manifest), "--out", str(out)]) == 2
    assert f"{manifest}: cannot be read as UTF-8 text" in _error(capsys)
    assert not out.exists()


def test_global_flags_work_after_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.yaml")
    out = str(tmp_path / "run")
    for args in (["eval", "rgb", RGB, "--synth", "--out", out, "--config", missing],
                 ["--config", missing, "eval", "rgb", RGB, "--synth", "--out", out],
                 ["eval", "--config", missing, "rgb", RGB, "--synth", "--out", out]):
        assert main(args) == 2
        assert f"voicechat: error: {missing}: no such config file" in _error(capsys)


def test_global_flag_after_the_dataset_wins_over_one_before_the_command(
        tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.yaml")
    out = str(tmp_path / "run")
    assert main(["--config", config, "eval", "rgb", RGB, "--synth", "--out", out, "--config", missing]) == 2
    assert f"{missing}: no such config file" in _error(capsys)
    assert main(["--config", missing, "eval", "rgb", RGB, "--synth", "--top-k", "0", "--out", out,
                 "--config", config]) == 2
    assert "--top-k must be at least 1" in _error(capsys)


def test_a_run_without_results_yet_is_replaced_by_another(tmp_path: Path) -> None:
    info = {"dataset": "folder", "options": {"knowledge": "nodir"}, "questions": ["a"], "models": {}, "modes": ["e2e"]}
    check_run_info(tmp_path, info)
    other = {**info, "options": {"knowledge": "notes"}, "modes": ["asr"]}
    assert check_run_info(tmp_path, other) == other
    assert json.loads((tmp_path / RUN_INFO).read_text(encoding="utf-8")) == other
    (tmp_path / RESULTS).write_text('{"id": "a", "mo', encoding="utf-8")  # cut short: no result yet
    assert check_run_info(tmp_path, info) == info


def test_a_run_with_results_is_not_mixed_with_another(tmp_path: Path) -> None:
    from voicechat.errors import VoicechatError

    info = {"dataset": "folder", "options": {"knowledge": "notes"}, "questions": ["a"], "models": {}, "modes": ["e2e"]}
    check_run_info(tmp_path, info)
    (tmp_path / RESULTS).write_text('{"id": "a", "mode": "e2e"}\n', encoding="utf-8")
    with pytest.raises(VoicechatError, match="holds a run with another dataset slice"):
        check_run_info(tmp_path, {**info, "options": {"knowledge": "other"}})
    assert check_run_info(tmp_path, {**info, "modes": ["asr"]})["modes"] == ["e2e", "asr"]
