"""The remote engine end to end: a real engine server in another process on loopback (the tiny
models), asked by `voicechat ask`, by conversation sessions and by a bare WebSocket client."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import yaml
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.support.engine_server import TOKEN, TOKEN_ENV, EngineServerProcess, free_port
from tests.support.speech import vowels
from voicechat.assemble import load_components
from voicechat.audio.files import read_audio, write_wav
from voicechat.cli import main
from voicechat.config import Config, VoicePreset
from voicechat.engine import TurnInput
from voicechat.events import AudioChunk, Notice, Retrieved, SettingsChanged, StageFailed, TurnConfirmed, TurnFinished
from voicechat.hold import Hold
from voicechat.remote import protocol
from voicechat.remote.client import EngineLink, EngineUnavailable, RemoteEngine
from voicechat.sessions import read_turns
from voicechat.session import ConversationSession

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def token(monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def remote_session(config: Config, url: str, events: list | None = None, save: bool = False) -> ConversationSession:
    session = ConversationSession(config, (events if events is not None else []).append, save=save)
    link = EngineLink.open(url, TOKEN)
    session.ready(None, engine=lambda emit: RemoteEngine(link, emit, reconnect=lambda: EngineLink.open(url, TOKEN)))
    return session


def raw_client(url: str):
    """A bare WebSocket client after the handshake: it can send what voicechat never would."""
    ws = connect(url + protocol.PATH, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None,
                 legacy=True)
    ws.send(protocol.dump({"type": "hello", "protocol": protocol.PROTOCOL_VERSION}))
    assert protocol.parse(ws.recv(timeout=30))["type"] == "welcome"
    return ws


def next_of(ws, kind: str, timeout: float = 120) -> dict:
    """The next message of a type, skipping events."""
    while True:
        message = ws.recv(timeout=timeout)
        header = protocol.unpack(message)[0] if isinstance(message, bytes) else protocol.parse(message)
        if header["type"] == kind:
            return header


def health(url: str) -> dict:
    request = urllib.request.Request(url.replace("ws://", "http://") + protocol.HEALTH_PATH,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_ask_through_the_remote_engine_gives_the_reply_of_the_same_turn_in_process(
        engine_server: EngineServerProcess, engine_config_path: Path, tmp_path: Path, capsys) -> None:
    question = tmp_path / "question.wav"
    write_wav(question, vowels(1.0), 16000)
    replies = {}
    for where, flags in (("here", []), ("remote", ["--engine-url", engine_server.url, "--engine-token-env", TOKEN_ENV])):
        out = tmp_path / f"{where}.wav"
        assert main(["--config", str(engine_config_path), "--threads", "1", *flags, "ask", str(question),
                     "--out", str(out), "--json"]) == 0
        replies[where] = (json.loads(capsys.readouterr().out), read_audio(out)[0])
    (here, here_audio), (remote, remote_audio) = replies["here"], replies["remote"]
    assert remote["reply"] == here["reply"] and remote["sources"] == here["sources"] and remote["problems"] == []
    assert remote_audio.size > 0 and np.array_equal(remote_audio, here_audio)
    assert remote["timings"]["network_ms"] > 0 and here["timings"]["network_ms"] is None
    assert remote["timings"]["tokenize_ms"] > 0 and remote["timings"]["first_audio_ms"] > 0


def test_a_remote_engine_serving_qwen_omni_gives_the_reply_of_the_same_turn_in_process(
        tiny_qwen_models_dir: Path, tmp_path: Path, capsys) -> None:
    data = yaml.safe_load((tiny_qwen_models_dir / "config.yaml").read_text())
    data["retrieval"] = {**data.get("retrieval", {}), "rag": "off"}
    data["generation"] = {**data.get("generation", {}), "temperature": 0.0}
    data["qwen"] = {**data.get("qwen", {}), "talker_temperature": 0.0}  # greedy: a reply is its prompt's
    data["sessions"] = {"dir": str(tmp_path / "sessions")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    question = tmp_path / "question.wav"
    write_wav(question, vowels(1.0), 16000)
    server = EngineServerProcess(config, tmp_path / "server.log")
    try:
        replies = {}
        for where, flags in (("here", []), ("remote", ["--engine-url", server.url, "--engine-token-env", TOKEN_ENV])):
            out = tmp_path / f"{where}.wav"
            assert main(["--config", str(config), "--threads", "1", *flags, "ask", str(question),
                         "--out", str(out), "--json"]) == 0
            replies[where] = (json.loads(capsys.readouterr().out), *read_audio(out))
        assert main(["--config", str(config), "--engine-url", server.url, "--engine-token-env", TOKEN_ENV,
                     "doctor"]) in (0, 1)  # no audio devices here is a failed check
        doctor = capsys.readouterr().out
    finally:
        server.stop()
    (here, here_audio, here_rate), (remote, remote_audio, remote_rate) = replies["here"], replies["remote"]
    assert remote["reply"] == here["reply"] and remote["problems"] == []
    assert remote_rate == here_rate == 24000 and remote_audio.size > 0 and np.array_equal(remote_audio, here_audio)
    assert "remote engine" in doctor and "qwen2.5-omni" in doctor


def test_concurrent_conversations_each_get_the_replies_to_their_own_questions_and_history(
        engine_server: EngineServerProcess, engine_config: Config) -> None:
    config = dataclasses.replace(engine_config, retrieval=dataclasses.replace(engine_config.retrieval, rag="off"))
    questions = [[f"Question {n} of conversation {c}: what about {word}?" for n in range(2)]
                 for c, word in enumerate(["tea", "rivers", "engines", "bread"])]
    parts = load_components(config)
    try:  # the same conversations in this process, one after another
        expected = []
        for conversation in questions:
            session = ConversationSession(config, lambda event: None, save=False)
            session.ready(parts)
            expected.append([session.run_turn(TurnInput(text=q)).reply_audio for q in conversation])
    finally:
        parts.close()
    got: dict[int, list] = {}

    def talk(number: int) -> None:
        session = remote_session(config, engine_server.url)
        got[number] = [session.run_turn(TurnInput(text=q)) for q in questions[number]]
        session.engine.close()

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number, results in got.items():
        assert [r.finished.turn for r in results] == [1, 2]
        for result, audio in zip(results, expected[number]):
            assert not result.finished.interrupted and np.array_equal(result.reply_audio, audio)
    assert len(got) == len(questions)


def test_interrupt_cuts_the_remote_reply_and_the_next_turn_is_answered(
        engine_server: EngineServerProcess, engine_config: Config) -> None:
    config = dataclasses.replace(engine_config, retrieval=dataclasses.replace(engine_config.retrieval, rag="off"))
    events: list = []
    session = remote_session(config, engine_server.url, events)
    first_audio = threading.Event()
    original = session.emit

    def watch(event) -> None:
        original(event)
        if isinstance(event, AudioChunk):
            first_audio.set()

    session.emit = watch
    interrupter = threading.Thread(target=lambda: first_audio.wait(120) and session.interrupt())
    interrupter.start()
    cut = session.run_turn(TurnInput(text="Tell me a long story."))
    interrupter.join()
    assert cut.finished.interrupted
    whole = session.run_turn(TurnInput(text="And another one."))
    assert not whole.finished.interrupted and whole.reply_audio.size > 0
    assert [t[2] for t in session.transcript] == [True, False]
    session.engine.close()


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_value", [None, "wrong"])
def test_a_wrong_or_missing_token_is_one_line_and_exit_2(engine_server: EngineServerProcess,
                                                         engine_config_path: Path, capsys, monkeypatch,
                                                         token_value: str | None) -> None:
    flags = ["--engine-url", engine_server.url]
    if token_value:
        monkeypatch.setenv("OTHER_TOKEN", token_value)
        flags += ["--engine-token-env", "OTHER_TOKEN"]
    assert main(["--config", str(engine_config_path), *flags, "ask", "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert "refused the token (HTTP 401)" in err and len(err.strip().splitlines()) == 1


def test_another_protocol_version_is_refused_on_both_sides(engine_server: EngineServerProcess,
                                                           engine_config_path: Path, capsys, monkeypatch) -> None:
    ws = connect(engine_server.url + protocol.PATH, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                 legacy=True)
    ws.send(protocol.dump({"type": "hello", "protocol": 99}))
    refusal = protocol.parse(ws.recv(timeout=30))
    assert refusal["code"] == "version" and "speaks protocol 1" in refusal["message"]
    ws.close()
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 99)  # a client of another version
    assert main(["--config", str(engine_config_path), "--engine-url", engine_server.url,
                 "--engine-token-env", TOKEN_ENV, "ask", "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert "install the same voicechat version on both machines" in err and len(err.strip().splitlines()) == 1


def test_malformed_messages_are_answered_with_an_error_and_the_conversation_goes_on(
        engine_server: EngineServerProcess) -> None:
    ws = raw_client(engine_server.url)
    for bad in ["not json", protocol.dump({"no": "type"}), protocol.dump({"type": "dance"}), b"\x00\x00\xff\xffjunk",
                protocol.pack({"type": "turn", "id": 1, "samples": 10, "rate": 16000, "format": "s16le"}, b"\x00" * 4)]:
        ws.send(bad)
        error = next_of(ws, "error", timeout=30)
        assert error["message"] and error["code"] == "bad_message"
    ws.send(protocol.dump({"type": "turn", "id": 2, "text": "Still there?", "settings": {"rag": "off"}}))
    assert next_of(ws, "turn_done")["id"] == 2
    ws.close()


def test_an_utterance_over_the_limit_is_refused_and_an_oversized_frame_closes_only_that_connection(
        engine_server: EngineServerProcess) -> None:
    ws = raw_client(engine_server.url)
    pcm = np.zeros(6 * 16000, "<i2")  # the server takes 5 s
    ws.send(protocol.pack({"type": "turn", "id": 1, "samples": pcm.size, "rate": 16000, "format": "s16le"},
                          pcm.tobytes()))
    error = next_of(ws, "error", timeout=30)
    assert error["code"] == "too_long" and error["turn"] == 1 and "at most 5 s" in error["message"]
    other = raw_client(engine_server.url)
    ws.send(b"\x00" * (2 * 1024 * 1024))  # over serve.max_frame_bytes (1 MiB)
    with pytest.raises(Exception) as closed:
        next_of(ws, "error", timeout=30)
    assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1009  # message too big
    other.send(protocol.dump({"type": "turn", "id": 1, "text": "Are you still serving?", "settings": {"rag": "off"}}))
    assert next_of(other, "turn_done")["id"] == 1
    other.close()


def test_a_client_gone_mid_reply_has_its_turn_cancelled_and_the_server_serves_others(
        engine_server: EngineServerProcess) -> None:
    ws = raw_client(engine_server.url)
    ws.send(protocol.dump({"type": "turn", "id": 1, "text": "Tell me a long story.", "settings": {"rag": "off"}}))
    while not (isinstance(message := ws.recv(timeout=120), bytes)):  # the first audio chunk
        pass
    assert health(engine_server.url)["turns_running"] == 1
    ws.socket.close()  # gone without a closing handshake
    deadline = time.monotonic() + 60
    while health(engine_server.url)["turns_running"]:  # the server offers no event to wait on from here
        assert time.monotonic() < deadline, "the abandoned turn was not cancelled"
        time.sleep(0.05)
    other = raw_client(engine_server.url)
    other.send(protocol.dump({"type": "turn", "id": 1, "text": "Hello?", "settings": {"rag": "off"}}))
    assert next_of(other, "turn_done")["id"] == 1
    other.close()


def test_a_server_killed_mid_reply_is_one_line_the_turn_is_kept_and_the_next_question_reconnects(
        engine_config_path: Path, engine_config: Config, tmp_path: Path) -> None:
    port = free_port()
    server = EngineServerProcess(engine_config_path, tmp_path / "server.log", port)
    config = dataclasses.replace(engine_config, retrieval=dataclasses.replace(engine_config.retrieval, rag="off"))
    events: list = []
    session = remote_session(config, server.url, events, save=True)
    first_audio = threading.Event()
    original = session.emit

    def watch(event) -> None:
        original(event)
        if isinstance(event, AudioChunk):
            first_audio.set()

    session.emit = watch
    killer = threading.Thread(target=lambda: first_audio.wait(120) and server.kill())
    killer.start()
    try:
        cut = session.run_turn(TurnInput(text="Tell me a long story."))
    finally:
        killer.join()
    (failure,) = [e for e in events if isinstance(e, StageFailed)]
    assert failure.stage == "engine server" and "went away mid-turn" in failure.message
    assert cut.finished.interrupted and cut.reply_audio.size > 0  # what arrived is kept
    assert len(session.transcript) == 1 and len(read_turns(session.log.path)) == 1
    refused = session.run_turn(TurnInput(text="Are you back?"))  # not yet
    assert any("cannot reach the engine server" in e.message for e in events if isinstance(e, StageFailed))
    assert refused.finished.reply_text == "" and refused.reply_audio.size == 0
    server = EngineServerProcess(engine_config_path, tmp_path / "server2.log", port)
    try:
        back = session.run_turn(TurnInput(text="Are you back now?"))
    finally:
        server.stop()
    assert any(isinstance(e, Notice) and "reconnected" in e.text for e in events)
    assert back.reply_audio.size > 0 and not back.finished.interrupted
    assert [e for e in events if isinstance(e, TurnFinished)][-1].turn == 3
    assert len(read_turns(session.log.path)) == 3


def test_an_engine_server_that_is_not_there_is_one_line(engine_config_path: Path, capsys) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnavailable, match="cannot reach the engine server"):
        EngineLink.open(url, None)
    assert main(["--config", str(engine_config_path), "--engine-url", url, "ask", "--text", "hi"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_doctor_checks_the_remote_engine_instead_of_local_models(engine_server: EngineServerProcess,
                                                                  engine_config_path: Path, capsys) -> None:
    flags = ["--config", str(engine_config_path), "--engine-url", engine_server.url, "--engine-token-env", TOKEN_ENV]
    assert main([*flags, "doctor", "--json"]) == 0
    checks = {c["area"]: c for c in json.loads(capsys.readouterr().out)}
    engine = checks["remote engine"]
    assert engine["ok"] and "protocol 1" in engine["detail"] and "retrieval modes e2e, text" in engine["detail"]
    assert "knowledge index" not in checks  # the index is the server's
    assert main([*flags[:-2], "doctor"]) == 1  # no token
    assert "refused the token" in capsys.readouterr().out


def test_a_held_turn_on_the_remote_engine_waits_here_and_a_dropped_one_leaves_no_trace_on_the_server(
        engine_server: EngineServerProcess, engine_config: Config) -> None:
    config = dataclasses.replace(engine_config, retrieval=dataclasses.replace(engine_config.retrieval, rag="off"))
    fresh = remote_session(config, engine_server.url)
    fresh.run_turn(TurnInput(text="Good morning."))
    expected = fresh.run_turn(TurnInput(audio=vowels(1.2, 150.0)))
    fresh.engine.close()
    events: list = []
    session = remote_session(config, engine_server.url, events)
    session.run_turn(TurnInput(text="Good morning."))  # the server now holds a history
    events.clear()

    def held(audio: np.ndarray) -> tuple[TurnInput, threading.Thread, dict]:
        question, outcome = TurnInput(audio=audio, speech_end_t=time.monotonic(), hold=Hold()), {}
        thread = threading.Thread(target=lambda: outcome.setdefault("result", session.run_turn(question)))
        thread.start()
        assert question.hold.audio_ready.wait(120)  # the reply's first audio arrived, and waits here
        return question, thread, outcome

    dropped, thread, _ = held(vowels(0.8, 220.0))
    dropped.hold.drop()
    thread.join(120)
    assert events == [] and len(session.transcript) == 1
    kept, thread, outcome = held(vowels(1.2, 150.0))
    assert events == []
    kept.hold.release()
    thread.join(120)
    result = outcome["result"]
    assert result.finished.turn == 2 and any(isinstance(e, TurnConfirmed) for e in events)
    # the server forgot the dropped question: the same prompt as a conversation that never heard it
    assert result.finished.timings.prompt_tokens == expected.finished.timings.prompt_tokens
    assert np.array_equal(result.reply_audio, expected.reply_audio)
    assert len(session.transcript) == 2
    session.engine.close()


# --- settings switched during a conversation -------------------------------------------------------


def switch(session: ConversationSession, settled: threading.Event, change) -> None:
    """Makes a switch and waits for its outcome (the server answers on another thread)."""
    settled.clear()
    change()
    assert settled.wait(30), "the switch had no outcome"


def test_switches_reach_the_servers_conversation_and_one_it_refuses_is_a_notice_with_the_settings_kept(
        engine_server: EngineServerProcess, engine_config: Config) -> None:
    voices = {**engine_config.voices, "pirate": VoicePreset("Only on this machine.", "Speak like a pirate.")}
    config = dataclasses.replace(engine_config, voices=voices)
    events: list = []
    settled = threading.Event()

    def watch(event) -> None:
        events.append(event)
        if isinstance(event, SettingsChanged):
            settled.set()

    session = ConversationSession(config, watch, save=False)
    url = engine_server.url
    session.ready(None, engine=lambda emit: RemoteEngine(EngineLink.open(url, TOKEN), emit,
                                                         reconnect=lambda: EngineLink.open(url, TOKEN)))
    switch(session, settled, lambda: session.set_rag("asr"))  # the server has no Whisper
    switch(session, settled, lambda: session.set_voice("pirate"))  # nor this voice
    refusals = [e.text for e in events if isinstance(e, Notice) and e.error]
    assert refusals == ["cannot switch to retrieval asr: the engine server has not loaded the asr retrieval models "
                        "(it has: e2e, text)",
                        "cannot switch to voice pirate: the engine server has no voice 'pirate'; it has: "
                        + ", ".join(engine_config.voices)]
    assert (session.settings.rag, session.settings.voice) == ("e2e", "default")

    def sources_of_a_turn() -> list:
        start = len(events)
        session.run_turn(TurnInput(text="How long should green tea steep?"))
        return [e for e in events[start:] if isinstance(e, Retrieved)]

    switch(session, settled, lambda: session.set_rag("off"))
    assert session.settings.rag == "off" and sources_of_a_turn() == []
    switch(session, settled, lambda: session.set_rag("e2e"))
    switch(session, settled, lambda: session.set_two_round("rewrite"))
    switch(session, settled, lambda: session.set_voice("calm"))
    assert (session.settings.rag, session.settings.two_round, session.settings.voice) == ("e2e", "rewrite", "calm")
    assert any(isinstance(e, Notice) and e.text.startswith("voice calm:") for e in events)
    assert [r.mode for r in sources_of_a_turn()] == ["text"]  # a typed question searches by its text
    session.engine.close()


# --- the server under abuse -----------------------------------------------------------------------


def wait_for_health(url: str, condition, what: str) -> dict:
    deadline = time.monotonic() + 60
    while not condition(state := health(url)):  # the server offers no event to wait on from here
        assert time.monotonic() < deadline, f"{what}: {state}"
        time.sleep(0.05)
    return state


def test_a_client_sending_garbage_does_not_disturb_another_conversation(
        engine_server: EngineServerProcess, engine_config: Config) -> None:
    config = dataclasses.replace(engine_config, retrieval=dataclasses.replace(engine_config.retrieval, rag="off"))
    rng = np.random.default_rng(0)
    stop = threading.Event()
    answered: list[str] = []

    def babble() -> None:
        ws = raw_client(engine_server.url)
        while not stop.is_set():
            junk = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
            ws.send(junk if rng.random() < 0.5 else junk.decode("latin-1"))
            answered.append(next_of(ws, "error", timeout=30)["code"])
        ws.close()

    babbler = threading.Thread(target=babble)
    babbler.start()
    try:
        session = remote_session(config, engine_server.url)
        results = [session.run_turn(TurnInput(text=q)) for q in ("Hello there.", "And again?")]
        session.engine.close()
    finally:
        stop.set()
        babbler.join()
    assert all(not r.finished.interrupted and r.reply_audio.size > 0 for r in results)
    assert [r.finished.turn for r in results] == [1, 2]
    assert answered and set(answered) == {"bad_message"}


def test_many_connections_opened_and_dropped_leave_no_conversation_or_thread_behind(
        engine_server: EngineServerProcess) -> None:
    before = wait_for_health(engine_server.url, lambda h: h["conversations"] == 0 and not h["turns_running"],
                             "the server to be idle")
    for cycle in range(20):
        ws = raw_client(engine_server.url)
        if cycle % 4 == 0:  # some leave mid-turn, some without a closing handshake
            ws.send(protocol.dump({"type": "turn", "id": 1, "text": "Tell me a story.", "settings": {"rag": "off"}}))
            next_of(ws, "event", timeout=120)
        if cycle % 2:
            ws.socket.close()
        else:
            ws.close()
    after = wait_for_health(engine_server.url, lambda h: h["conversations"] == 0 and not h["turns_running"]
                            and h["threads"] <= before["threads"], "conversations or threads left behind")
    assert after["threads"] <= before["threads"], (before, after)
