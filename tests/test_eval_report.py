"""The run summary: per-mode means and latency percentiles, markdown and JSON, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicechat.evaluation.report import by_length, summarise, write_plots, write_summary


def _record(mode: str, f1: float, retrieve_ms: float | None, recall: float | None = None, problems=()) -> dict:
    metrics = {"em": float(f1 == 1.0), "f1": f1}
    if recall is not None:
        metrics["recall"] = recall
    return {"id": "q", "mode": mode, "metrics": metrics, "problems": list(problems),
            "timings": {"retrieve_ms": retrieve_ms, "total_ms": 100.0}}


RECORDS = [
    _record("e2e", 1.0, 10.0, 1.0), _record("e2e", 0.5, 30.0, 0.5),
    _record("asr", 0.0, 40.0, 0.0), _record("asr", 1.0, 80.0, 1.0, problems=["retrieval: boom"]),
    _record("norag", 0.25, None),
]


def _info(synthetic: bool) -> dict:
    return {"dataset": "hotpotqa", "data": "dev.json", "limit": 2, "seed": None, "questions": ["a", "b"],
            "modes": ["e2e", "asr", "norag"], "options": {"top_k": 4, "scope": "question"},
            "speech": {"kind": "synthetic" if synthetic else "speech-set", "description": "x", "synthetic": synthetic},
            "models": {"sonar_speech": {"source": "card.yaml"}}}


def test_summary_rows_are_means_and_percentiles_per_mode() -> None:
    rows = summarise(RECORDS, ["e2e", "asr", "norag"])
    assert rows["e2e"]["f1"] == pytest.approx(0.75) and rows["e2e"]["em"] == 0.5
    assert rows["e2e"]["recall"] == 0.75
    assert rows["e2e"]["retrieve_ms"] == {"p50": 20.0, "p90": pytest.approx(28.0)}
    assert rows["asr"]["failed_turns"] == 1
    assert rows["norag"]["retrieve_ms"] == {"p50": None, "p90": None} and "recall" not in rows["norag"]


def test_summary_files_record_the_run_and_mark_synthetic_speech(tmp_path: Path) -> None:
    summary = write_summary(tmp_path, _info(synthetic=True), RECORDS)
    assert summary["asr_over_e2e_retrieval_time"] == pytest.approx(3.0)  # medians 60 / 20
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["run"]["models"] == {"sonar_speech": {"source": "card.yaml"}}
    text = (tmp_path / "summary.md").read_text()
    assert "Synthetic speech" in text and "| e2e | 2 | 0.500 | 0.750 | 0.750 |" in text
    assert "asr / e2e median retrieval time: 3.00x" in text and "- models: sonar_speech card.yaml" in text
    real = write_summary(tmp_path, _info(synthetic=False), RECORDS)
    assert "Synthetic" not in (tmp_path / "summary.md").read_text() and real["run"]["speech"]["synthetic"] is False


def test_summary_of_an_unfinished_run_is_marked_partial(tmp_path: Path) -> None:
    info = dict(_info(synthetic=False), questions=["a", "b"], modes=["e2e", "asr"])
    records = [dict(_record("e2e", 1.0, 10.0), id="a"), dict(_record("asr", 1.0, 20.0), id="a")]
    summary = write_summary(tmp_path, info, records)
    assert summary["progress"] == {"finished": 2, "expected": 4, "partial": True}
    assert (tmp_path / "summary.md").read_text().splitlines()[2] == (
        "**Partial run**: 2 of 4 question-mode pairs finished (interrupted); run the same command again to finish it.")
    records += [dict(_record(mode, 1.0, 10.0), id="b") for mode in ("e2e", "asr")]
    assert write_summary(tmp_path, info, records)["progress"]["partial"] is False
    assert "Partial" not in (tmp_path / "summary.md").read_text()


def test_retrieval_time_is_split_by_question_length(tmp_path: Path) -> None:
    records = [dict(r, audio_s=s) for r, s in zip(RECORDS, (1.0, 12.0, 2.0, 4.5, 1.0))]
    table = by_length(records + [_record("e2e", 1.0, 99.0)], ["e2e", "asr", "norag"])  # no audio_s: left out
    assert table["e2e"] == {"< 3 s": {"questions": 1, "p50": 10.0, "p90": 10.0},
                            ">= 10 s": {"questions": 1, "p50": 30.0, "p90": 30.0}}
    assert table["asr"]["3-6 s"]["p50"] == 80.0 and "norag" not in table  # no retrieval, no times
    write_summary(tmp_path, _info(synthetic=False), records)
    text = (tmp_path / "summary.md").read_text()
    assert "| mode | < 3 s | 3-6 s | >= 10 s |" in text and "| e2e | 10.0 (1) | – | 30.0 (1) |" in text


def test_plots_are_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    summary = write_summary(tmp_path, _info(synthetic=False), RECORDS)
    written = write_plots(tmp_path, summary)
    assert [p.name for p in written] == ["accuracy.png", "retrieval_time.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
