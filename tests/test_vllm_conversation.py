"""Whole turns with the language model on a real vLLM server (the CPU build) and everything else
in process or on a remote engine, on the tiny models: `voicechat ask` answers as it does with the
model in process, and a server killed mid-reply costs that reply only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.engine_server import TOKEN, TOKEN_ENV, EngineServerProcess
from tests.support.speech import vowels
from tests.support.vllm import VllmServer
from voicechat.assemble import load_components
from voicechat.audio.files import read_audio, write_wav
from voicechat.cli import main
from voicechat.config import Config, load_config
from voicechat.engine import Components, TurnInput
from voicechat.events import Event, SpeechTokens, StageFailed, TurnFinished
from voicechat.session import ConversationSession

pytestmark = pytest.mark.slow


def write_config(folder: Path, tiny_models_dir: Path, vllm_lm: Path, backend: dict[str, Any]) -> Path:
    """The tiny models with the vLLM-sized language model, greedy, and the given backend."""
    data = yaml.safe_load((tiny_models_dir / "config.yaml").read_text())
    data["models"]["lm"]["source"] = str(vllm_lm)
    data["generation"] = {**data.get("generation", {}), "temperature": 0.0, "top_p": 1.0}
    data["retrieval"] = {**data["retrieval"], "rag": "off"}
    data["backend"] = backend
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def served_config(tiny_models_dir: Path, vllm_lm: Path, vllm_server: VllmServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    backend = {"kind": "openai", "url": vllm_server.url, "retries": 1, "read_timeout_s": 60.0,
               "api_key_env": "VOICECHAT_TEST_VLLM_KEY"}
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("VOICECHAT_TEST_VLLM_KEY", vllm_server.api_key)
        yield write_config(tmp_path_factory.mktemp("served"), tiny_models_dir, vllm_lm, backend)


@pytest.fixture(scope="module")
def local_config(tiny_models_dir: Path, vllm_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("local"), tiny_models_dir, vllm_lm, {"kind": "local"})


def ask(config: Path, question: Path, reply: Path, capsys: pytest.CaptureFixture[str],
        flags: tuple[str, ...] = ()) -> dict[str, Any]:
    code = main(["--config", str(config), *flags, "ask", str(question), "--out", str(reply), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0, printed["problems"]
    return printed


def test_ask_with_the_lm_on_vllm_replies_in_text_and_audio_as_the_local_model_does(
        served_config: Path, local_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    question = tmp_path / "question.wav"
    write_wav(question, vowels(1.0), 16000)
    served = ask(served_config, question, tmp_path / "served.wav", capsys)
    local = ask(local_config, question, tmp_path / "local.wav", capsys)
    assert served["reply"] and served["reply_audio_seconds"] > 0  # text and speech tokens both came back
    assert (served["reply"], served["reply_audio_seconds"]) == (local["reply"], local["reply_audio_seconds"])
    samples, rate = read_audio(tmp_path / "served.wav")
    assert samples.shape[0] / rate == pytest.approx(served["reply_audio_seconds"], abs=0.01)


def test_a_remote_engine_with_its_lm_on_vllm_answers_as_the_model_in_process_does(
        served_config: Path, local_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    question = tmp_path / "question.wav"
    write_wav(question, vowels(1.0), 16000)
    engine = EngineServerProcess(served_config, tmp_path / "engine.log")  # its backend: vLLM
    try:
        remote = ask(served_config, question, tmp_path / "remote.wav", capsys,
                     ("--engine-url", engine.url, "--engine-token-env", TOKEN_ENV))
    finally:
        engine.stop()
    local = ask(local_config, question, tmp_path / "local.wav", capsys)
    assert remote["reply"] and remote["reply_audio_seconds"] > 0
    assert (remote["reply"], remote["reply_audio_seconds"]) == (local["reply"], local["reply_audio_seconds"])


class KillOnFirstSpeech:
    """Records the session's events and kills the server when the first speech tokens arrive."""

    def __init__(self, server: VllmServer) -> None:
        self.server, self.armed = server, False
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.armed and isinstance(event, SpeechTokens):
            self.armed = False
            self.server.kill()

    def failures(self) -> list[str]:
        return [e.message for e in self.events if isinstance(e, StageFailed)]


@pytest.fixture
def served_parts(served_config: Path) -> Iterator[tuple[Config, Components]]:
    config = load_config(served_config)
    parts = load_components(config)
    yield config, parts
    parts.close()


def test_vllm_killed_mid_reply_fails_that_reply_only_and_the_conversation_goes_on_after_a_restart(
        served_parts: tuple[Config, Components], vllm_server: VllmServer) -> None:
    config, parts = served_parts
    events = KillOnFirstSpeech(vllm_server)
    session = ConversationSession(config, events, save=False)
    session.ready(parts)
    first = session.run_turn(TurnInput(text="When does the library open?"))
    session.turn_over()
    assert events.failures() == [] and first.finished.reply_text

    events.armed = True
    session.run_turn(TurnInput(text="And when does it close?"))
    session.turn_over()
    failures = events.failures()
    assert len(failures) == 1 and "was cut after" in failures[0] and "\n" not in failures[0]
    assert [q for q, _, _ in session.transcript] == ["When does the library open?", "And when does it close?"]

    events.events.clear()
    session.run_turn(TurnInput(text="Are you there?"))  # while the server is down
    session.turn_over()
    assert re.search(r"cannot get a reply .* after 2 attempts \(connection refused\); is the server running",
                     "".join(events.failures()))

    vllm_server.start()
    events.events.clear()
    third = session.run_turn(TurnInput(text="Thank you."))
    assert events.failures() == [] and third.finished.reply_text
    assert any(isinstance(e, TurnFinished) for e in events.events)
