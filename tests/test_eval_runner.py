"""The evaluation runner and `voicechat eval` on the tiny random-weight models: every mode runs
through the engine, results are appended per question, a rerun resumes, reports are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voicechat.cli import main
from voicechat.errors import VoicechatError
from voicechat.evaluation.runner import RESULTS, ResultsFile, parse_modes

DATA = Path(__file__).resolve().parent / "data" / "eval"


def _speech_set(root: Path, dataset: str, ids: list[str]) -> Path:
    import soundfile

    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for qid in ids:
        path = root / dataset / "reader1" / qid / "question.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), tone, 16000)
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_unknown_mode_is_one_clear_error() -> None:
    assert parse_modes("e2e, asr,e2e") == ["e2e", "asr"]
    with pytest.raises(VoicechatError, match="unknown evaluation mode"):
        parse_modes("e2e,magic")


def test_results_file_drops_a_line_cut_short_by_an_interruption(tmp_path: Path) -> None:
    path = tmp_path / RESULTS
    path.write_text('{"id": "q1", "mode": "e2e"}\n{"id": "q2", "mo', encoding="utf-8")
    results = ResultsFile(path)
    assert results.done == {("q1", "e2e", "glm-4-voice")}  # written before there was a choice: GLM-4-Voice
    results.append({"id": "q2", "mode": "e2e"})
    assert [r["id"] for r in _lines(path)] == ["q1", "q2"]


@pytest.mark.slow
def test_hotpotqa_modes_side_by_side_then_rerun_skips_finished_questions(
        tmp_path: Path, tiny_models_dir: Path) -> None:
    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    out = tmp_path / "run"
    config = str(tiny_models_dir / "config.yaml")
    args = ["--config", config, "eval", "hotpotqa", str(DATA / "hotpot_small.json"), "--speech", str(speech),
            "--modes", "e2e,asr,text,norag", "--limit", "1", "--out", str(out)]
    assert main(args) == 0
    records = _lines(out / RESULTS)
    assert [(r["id"], r["mode"]) for r in records] == [("q1", "e2e"), ("q1", "asr"), ("q1", "text"), ("q1", "norag")]
    by_mode = {r["mode"]: r for r in records}
    assert sorted(by_mode["e2e"]["relevant"]) == ["q1/0.txt", "q1/1.txt"]
    assert len(by_mode["e2e"]["retrieved"]) == 3  # all of the question's passages (top 4 of 3)
    assert set(by_mode["e2e"]["retrieved"]) == {"q1/0.txt", "q1/1.txt", "q1/2.txt"}
    assert by_mode["e2e"]["metrics"]["recall"] == 1.0
    assert by_mode["asr"]["transcript"] is not None and "wer" in by_mode["asr"]["metrics"]
    assert by_mode["norag"]["retrieved"] == [] and "recall" not in by_mode["norag"]["metrics"]
    assert by_mode["e2e"]["timings"]["retrieve_ms"] > 0
    for record in records:
        assert 0.0 <= record["metrics"]["f1"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["e2e"]["questions"] == 1 and summary["run"]["questions"] == ["q1"]
    assert summary["asr_over_e2e_retrieval_time"] > 0
    assert "| e2e | 1 |" in (out / "summary.md").read_text()

    # Interrupted after two modes, the last line half written: the rerun keeps those two and
    # runs only what is missing.
    lines = (out / RESULTS).read_text(encoding="utf-8").splitlines(keepends=True)
    (out / RESULTS).write_text("".join(lines[:2]) + lines[2][:40], encoding="utf-8")
    assert main(args) == 0
    again = _lines(out / RESULTS)
    assert again[:2] == records[:2] and [r["mode"] for r in again[2:]] == ["text", "norag"]
    # Another slice in the same folder would mix results: refused with one clear message.
    assert main(args[:args.index("--limit")] + ["--out", str(out)]) == 2


@pytest.mark.slow
def test_interrupted_run_removes_its_temporary_indexes_and_a_rerun_finishes_it(
        tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from voicechat.evaluation import runner

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    real_run_question = runner.run_question
    answered = []

    def ctrl_c_at_the_second_question(config, parts, retriever, question, *rest):
        """Test double around the real runner step: Ctrl-C lands while the second question runs."""
        if answered:
            raise KeyboardInterrupt
        answered.append(list(temp.iterdir()))  # the run's temporary folder, holding the question's index
        return real_run_question(config, parts, retriever, question, *rest)

    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    out = tmp_path / "run"
    args = ["--config", str(tiny_models_dir / "config.yaml"), "eval", "hotpotqa", str(DATA / "hotpot_small.json"),
            "--speech", str(speech), "--modes", "norag", "--out", str(out)]
    monkeypatch.setattr(runner, "run_question", ctrl_c_at_the_second_question)
    assert main(args) == 130
    assert answered[0] and list(temp.iterdir()) == []  # the per-question indexes and their folder are gone
    assert [r["id"] for r in _lines(out / RESULTS)] == ["q1"]
    monkeypatch.setattr(runner, "run_question", real_run_question)
    assert main(args) == 0
    assert [r["id"] for r in _lines(out / RESULTS)] == ["q1", "q2"]
    assert list(temp.iterdir()) == []


@pytest.mark.slow
def test_global_scope_searches_every_question_passages_in_one_and_two_rounds(tmp_path: Path, tiny_models_dir: Path) -> None:
    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    out = tmp_path / "run"
    assert main(["--config", str(tiny_models_dir / "config.yaml"), "eval", "hotpotqa", str(DATA / "hotpot_small.json"),
                 "--speech", str(speech), "--modes", "e2e,rewrite", "--scope", "global", "--out", str(out)]) == 0
    records = _lines(out / RESULTS)
    every = {"q1/0.txt", "q1/1.txt", "q1/2.txt", "q2/0.txt", "q2/1.txt"}
    assert [r["mode"] for r in records] == ["e2e", "rewrite", "e2e", "rewrite"]
    assert all(len(r["retrieved"]) == 4 and set(r["retrieved"]) <= every for r in records)


@pytest.mark.slow
def test_rgb_with_synthetic_speech_is_marked_synthetic(tmp_path: Path, tiny_models_dir: Path) -> None:
    from tests.support.speech import espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    out = tmp_path / "run"
    args = ["--config", str(tiny_models_dir / "config.yaml"), "eval", "rgb", str(DATA / "rgb_small.jsonl"),
            "--synth", "--modes", "e2e,fallback", "--passages", "3", "--noise-rate", "1.0", "--out", str(out)]
    assert main(args) == 0
    records = _lines(out / RESULTS)
    assert len(records) == 4
    assert all(r["relevant"] == [] and r["metrics"]["recall"] is None for r in records)  # noise rate 1.0
    assert all("rejected" in r["metrics"] and "accuracy" in r["metrics"] for r in records)
    assert "Synthetic speech" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["run"]["speech"]["synthetic"] is True


def test_limit_takes_the_first_questions_or_a_seeded_random_slice() -> None:
    from voicechat.commands.eval import choose

    items = list(range(10))
    assert choose(items, 3, None) == [0, 1, 2]
    picked = choose(items, 3, seed=7)
    assert picked == choose(items, 3, seed=7) and len(picked) == 3 and picked == sorted(picked)
    assert choose(items, None, None) == items
    with pytest.raises(VoicechatError, match="--limit must be at least 1"):
        choose(items, 0, None)


def _own_folder(tmp_path: Path, models_dir: Path) -> tuple[Path, Path]:
    """A knowledge folder, a config whose index lives inside it, and spoken questions about it."""
    import soundfile
    import yaml

    knowledge = tmp_path / "notes"
    (knowledge / "drinks").mkdir(parents=True)
    (knowledge / "drinks" / "tea.md").write_text("# Tea\n\nGreen tea is grown in China and Japan.\n", encoding="utf-8")
    (knowledge / "paris.txt").write_text("The capital of France is Paris.\n", encoding="utf-8")
    (knowledge / "rivers.md").write_text("The Danube flows through Vienna.\n", encoding="utf-8")
    settings = yaml.safe_load((models_dir / "config.yaml").read_text())
    settings["retrieval"] = {"knowledge_dir": str(knowledge)}  # the index goes inside the folder
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 16000)).astype(np.float32)
    soundfile.write(str(tmp_path / "tea.wav"), tone, 16000)
    soundfile.write(str(tmp_path / "capital.wav"), tone[:8000], 16000)
    (tmp_path / "questions.jsonl").write_text(
        '{"id": "tea", "audio": "tea.wav", "text": "Where is green tea grown?", "answers": ["China", "Japan"],'
        ' "sources": ["drinks/tea.md"]}\n'
        '{"id": "capital", "audio": "capital.wav", "text": "What is the capital of France?", "answers": "Paris",'
        ' "sources": "paris.txt"}\n', encoding="utf-8")
    return config, tmp_path / "questions.jsonl"


@pytest.mark.slow
def test_own_folder_questions_are_searched_in_that_folders_updated_index(
        tmp_path: Path, tiny_models_dir: Path, capsys) -> None:
    config, questions = _own_folder(tmp_path, tiny_models_dir)
    out = tmp_path / "run"
    args = ["--config", str(config), "eval", "folder", str(questions), "--modes", "e2e,asr,text", "--top-k", "2",
            "--out", str(out)]
    assert main(args) == 0
    assert (tmp_path / "notes" / ".voicechat-index" / "manifest.json").is_file()  # built by the run
    records = _lines(out / RESULTS)
    assert [(r["id"], r["mode"]) for r in records] == [
        (q, m) for q in ("tea", "capital") for m in ("e2e", "asr", "text")]
    files = {"drinks/tea.md", "paris.txt", "rivers.md"}
    for record in records:
        assert record["relevant"] == (["drinks/tea.md"] if record["id"] == "tea" else ["paris.txt"])
        assert len(record["retrieved"]) == 2 and set(record["retrieved"]) <= files
        expected_recall = float(record["relevant"][0] in record["retrieved"])
        assert record["metrics"]["recall"] == expected_recall
        assert record["metrics"]["accuracy"] in (0.0, 1.0) and "rejected" not in record["metrics"]
    assert {r["audio_s"] for r in records} == {1.5, 0.5}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["options"]["scope"] == "folder"
    assert summary["run"]["options"]["knowledge"] == str(tmp_path / "notes")
    assert summary["retrieval_ms_by_length"]["e2e"]["< 3 s"]["questions"] == 2
    text = (out / "summary.md").read_text()
    assert "| mode | n | accuracy | recall |" in text and "by question audio length" in text

    # A note added since: the rerun updates the index, then finds nothing left to run.
    (tmp_path / "notes" / "new.md").write_text("Rome is the capital of Italy.\n", encoding="utf-8")
    assert main(args) == 0
    assert "1 added" in capsys.readouterr().out and len(_lines(out / RESULTS)) == 6


@pytest.mark.slow
def test_own_folder_errors_are_one_line_before_any_model_runs(
        tmp_path: Path, tiny_models_dir: Path, capsys) -> None:
    config, _ = _own_folder(tmp_path, tiny_models_dir)
    base = ["--config", str(config), "eval", "folder"]
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"id": "a", "audio": "tea.wav"}\n', encoding="utf-8")
    assert main(base + [str(no_text), "--modes", "e2e,text", "--out", str(tmp_path / "r1")]) == 2
    assert "mode text needs the text of every question" in capsys.readouterr().err
    wrong = tmp_path / "wrong_source.jsonl"
    wrong.write_text('{"id": "a", "audio": "tea.wav", "sources": ["notes/paris.txt"]}\n', encoding="utf-8")
    assert main(base + [str(wrong), "--out", str(tmp_path / "r2")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the index's progress notes
    assert "question a: source 'notes/paris.txt' is not in the index" in last
    no_audio = tmp_path / "no_audio.jsonl"
    no_audio.write_text('{"id": "a", "text": "Where is tea grown?"}\n', encoding="utf-8")
    assert main(base + [str(no_audio), "--out", str(tmp_path / "r3")]) == 2
    assert "not a manifest entry with id and audio" in capsys.readouterr().err


def _both_voice_models(tmp_path: Path, glm_dir: Path, qwen_dir: Path) -> Path:
    """One config with the tiny GLM-4-Voice and the tiny Qwen2.5-Omni (and their retrieval models)."""
    import yaml

    config = yaml.safe_load((glm_dir / "config.yaml").read_text())
    qwen = yaml.safe_load((qwen_dir / "config.yaml").read_text())
    config["models"]["omni"] = qwen["models"]["omni"]
    config["qwen"] = qwen["qwen"]
    config["generation"] = {"max_new_tokens": 40}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_same_questions_through_both_voice_models_side_by_side(
        tmp_path: Path, tiny_models_dir: Path, tiny_qwen_models_dir: Path) -> None:
    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    out = tmp_path / "run"
    config = _both_voice_models(tmp_path, tiny_models_dir, tiny_qwen_models_dir)
    args = ["--config", str(config), "eval", "hotpotqa", str(DATA / "hotpot_small.json"), "--speech", str(speech),
            "--modes", "e2e,norag", "--limit", "1", "--voice-models", "glm-4-voice,qwen2.5-omni", "--out", str(out)]
    assert main(args) == 0
    records = _lines(out / RESULTS)
    assert [(r["voice_model"], r["mode"]) for r in records] == [
        ("glm-4-voice", "e2e"), ("glm-4-voice", "norag"), ("qwen2.5-omni", "e2e"), ("qwen2.5-omni", "norag")]
    glm, qwen = records[0], records[2]
    assert glm["retrieved"] == qwen["retrieved"] and len(glm["retrieved"]) == 3  # retrieval is the voice models'
    assert all(r["reply"] and r["timings"]["first_audio_ms"] > 0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["voice_models"]) == ["glm-4-voice", "qwen2.5-omni"] == summary["run"]["voice_models"]
    assert all(rows["e2e"]["questions"] == 1 and rows["e2e"]["recall"] == 1.0
               for rows in summary["voice_models"].values())
    assert not summary["progress"]["partial"]
    markdown = (out / "summary.md").read_text()
    assert "| glm-4-voice | e2e | 1 |" in markdown and "| qwen2.5-omni | norag | 1 |" in markdown
    assert "Voice models side by side" in markdown
    assert main(args) == 0  # a rerun finds every pair done
    assert _lines(out / RESULTS) == records


@pytest.mark.slow
def test_eval_runs_with_qwen_as_the_configured_voice_model(tmp_path: Path, tiny_qwen_models_dir: Path) -> None:
    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    out = tmp_path / "run"
    assert main(["--config", str(tiny_qwen_models_dir / "config.yaml"), "eval", "hotpotqa",
                 str(DATA / "hotpot_small.json"), "--speech", str(speech), "--modes", "asr", "--out", str(out)]) == 0
    records = _lines(out / RESULTS)
    assert [(r["id"], r["voice_model"]) for r in records] == [("q1", "qwen2.5-omni"), ("q2", "qwen2.5-omni")]
    assert all(r["reply"] and r["transcript"] is not None and not r["problems"] for r in records)
    assert "voice model: qwen2.5-omni" in (out / "summary.md").read_text()


def test_an_unknown_voice_model_or_a_preset_it_lacks_is_one_line_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speech = _speech_set(tmp_path / "speech", "hotpotqa", ["q1", "q2"])
    config = tmp_path / "config.yaml"
    config.write_text("offline: true\nvoice: calm\n", encoding="utf-8")
    base = ["--config", str(config), "eval", "hotpotqa", str(DATA / "hotpot_small.json"), "--speech", str(speech),
            "--out", str(tmp_path / "run")]
    assert main(base + ["--voice-models", "glm-4-voice,gpt"]) == 2
    assert "unknown voice model(s) gpt; choose from glm-4-voice, qwen2.5-omni" in capsys.readouterr().err
    assert main(base + ["--voice-models", "glm-4-voice,qwen2.5-omni"]) == 2
    assert "voice preset 'calm' is not for qwen2.5-omni" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
