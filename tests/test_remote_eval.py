"""`voicechat eval folder --engine-url`: spoken questions about the engine server's own knowledge
folder, asked of a real engine server in another process (the tiny models), on a client that has
no models of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.support.engine_server import TOKEN, TOKEN_ENV, EngineServerProcess
from tests.support.speech import vowels
from voicechat.audio.files import write_wav
from voicechat.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asr_engine_server(engine_config_path: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[EngineServerProcess]:
    """An engine server that loaded e2e, asr and text retrieval (two-round fallback needs Whisper)
    and retrieves two passages."""
    folder = tmp_path_factory.mktemp("asr-engine")
    data = yaml.safe_load(engine_config_path.read_text())
    data["retrieval"] = {**data["retrieval"], "two_round": "fallback", "top_k": 2}
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    server = EngineServerProcess(folder / "config.yaml", folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def token(monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def client_config(tmp_path: Path) -> Path:
    """No models here: everything the eval needs is on the engine server."""
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump({"offline": True, "sessions": {"dir": str(tmp_path / "sessions")}}))
    return path


def spoken_questions(tmp_path: Path) -> Path:
    write_wav(tmp_path / "tea.wav", vowels(1.5), 16000)
    write_wav(tmp_path / "bike.wav", vowels(0.8), 16000)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"id": "tea", "audio": "tea.wav", "text": "How long should green tea steep?", "answers": ["minutes"],'
        ' "sources": ["tea-brewing.html"]}\n'
        '{"id": "bike", "audio": "bike.wav", "text": "How do I fix a flat tyre?",'
        ' "sources": "bicycle-maintenance.md"}\n', encoding="utf-8")
    return questions


def test_eval_folder_on_a_remote_engine_writes_its_summary_for_e2e_and_asr(
        asr_engine_server: EngineServerProcess, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["--config", str(client_config(tmp_path)), "--threads", "1", "--engine-url", asr_engine_server.url,
            "--engine-token-env", TOKEN_ENV, "eval", "folder", str(spoken_questions(tmp_path)),
            "--modes", "e2e,asr", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| mode | n |" in printed
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], r["mode"]) for r in records] == [(q, m) for q in ("tea", "bike") for m in ("e2e", "asr")]
    for record in records:
        assert record["problems"] == []
        assert len(record["retrieved"]) == 2 and "recall" in record["metrics"]  # the server's top_k
        assert record["timings"]["network_ms"] > 0 and record["timings"]["first_audio_ms"] > 0
        assert (record["transcript"] is not None) == (record["mode"] == "asr")
        assert ("wer" in record["metrics"]) == (record["mode"] == "asr")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["options"]["engine"] == asr_engine_server.url
    assert summary["run"]["models"]["knowledge"]["source"].endswith("knowledge")  # the server's, not this machine's
    assert summary["run"]["options"]["top_k"] == 2 and summary["run"]["generation"]["temperature"] == 0.0
    assert set(summary["modes"]) == {"e2e", "asr"} and all(row["questions"] == 2 and row["failed_turns"] == 0 for row in summary["modes"].values())
    assert "| mode | n |" in (out / "summary.md").read_text()

    assert main(args) == 0  # a rerun finds every question answered
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_eval_with_another_top_k_than_the_engine_servers_is_refused_in_one_line(
        asr_engine_server: EngineServerProcess, tmp_path: Path, capsys) -> None:
    assert main(["--config", str(client_config(tmp_path)), "--engine-url", asr_engine_server.url,
                 "--engine-token-env", TOKEN_ENV, "eval", "folder", str(spoken_questions(tmp_path)), "--top-k", "3",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retrieves 2 passages" in err[0] and "--top-k 2" in err[0]
    assert not (tmp_path / "run").exists()


def test_eval_asks_for_a_mode_the_engine_server_has_not_loaded_in_one_line(
        engine_server: EngineServerProcess, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--config", str(client_config(tmp_path)), "--engine-url", engine_server.url, "--engine-token-env",
                 TOKEN_ENV, "eval", "folder", str(spoken_questions(tmp_path)), "--modes", "e2e,asr",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has not loaded" in err[0] and "asr" in err[0]
    assert not (out / "results.jsonl").exists()


def test_eval_text_mode_on_a_remote_engine_is_refused_in_one_line(
        engine_server: EngineServerProcess, tmp_path: Path, capsys) -> None:
    assert main(["--config", str(client_config(tmp_path)), "--engine-url", engine_server.url, "--engine-token-env",
                 TOKEN_ENV, "eval", "folder", str(spoken_questions(tmp_path)), "--modes", "e2e,text",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode text retrieves on this machine" in err[0]

