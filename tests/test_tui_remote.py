"""The conversation screen in a real terminal (tmux) with a virtual microphone, its engine in
another process: a spoken question becomes a turn on screen with the network stage in its timings,
and the session log on this machine keeps it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from tests import test_tui_terminal as screen_support
from tests.support.engine_server import TOKEN, TOKEN_ENV, EngineServerProcess, free_port
from tests.support.pulse import MIC_RATE, PulseServer
from tests.support.speech import espeak_available, speak
from voicechat.sessions import read_turns

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.audio]


def start_app(pulse: PulseServer, url: str, engine_config_path: Path, tmp_path: Path) -> screen_support.Terminal:
    if shutil.which("tmux") is None or not espeak_available():
        pytest.skip("tmux and espeak-ng are needed")
    config = yaml.safe_load(engine_config_path.read_text())
    config["sessions"] = {"dir": str(tmp_path / "sessions")}
    config["engine"] = {"url": url, "token_env": TOKEN_ENV}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    name = f"voicechat-remote-test-{os.getpid()}"
    env = {**pulse.env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "XDG_STATE_HOME": str(tmp_path / "state"),
           TOKEN_ENV: TOKEN}
    command = f"{sys.executable} -m voicechat --config {tmp_path / 'config.yaml'}; sleep 30"
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "-s", name, "-x", "160", "-y", "45", command],
                   env=env, check=True, timeout=30)
    return screen_support.Terminal(name)


@pytest.fixture
def terminal(pulse: PulseServer, engine_server: EngineServerProcess, engine_config_path: Path,
             tmp_path: Path) -> Iterator[screen_support.Terminal]:
    terminal = start_app(pulse, engine_server.url, engine_config_path, tmp_path)
    yield terminal
    terminal.tmux("kill-server")


def test_spoken_question_to_a_remote_engine_becomes_a_turn_on_screen(pulse: PulseServer, terminal,
                                                                     tmp_path: Path) -> None:
    terminal.wait_until(lambda s: "LISTENING" in s, 120, "the app to connect and listen")
    question = speak("How long should green tea steep?")
    padded = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), question, np.zeros(MIC_RATE * 2, np.float32)])
    for _ in range(3):  # LISTENING can show a moment before the microphone's stream delivers audio
        pulse.play(padded, MIC_RATE).wait(timeout=60)
        if poll(terminal, lambda s: any(state in s for state in ("HEARING", "PAUSING", "THINKING", "SPEAKING", "total")), 20):
            break
    screen = terminal.wait_until(lambda s: "total" in s and "LISTENING" in s, 300, "the turn to complete")
    assert "Assistant" in screen
    assert re.search(r"^\W*1\s+0\.\d{3}\s+✔", screen, re.M)  # the sources the server found
    assert re.search(r"network\s+█+\s+\d+", screen)  # the remote hop as its own stage
    (log,) = (tmp_path / "sessions").glob("*/turns.jsonl")
    (turn,) = read_turns(log)
    assert turn["question"] is None and turn["user_audio"] and turn["reply_audio"]
    assert turn["timings"]["network_ms"] is not None
    terminal.press("q")
    terminal.wait_until(lambda s: "LISTENING" not in s, 60, "the app to quit")


def poll(terminal: screen_support.Terminal, condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(terminal.screen()):
            return True
        time.sleep(0.25)
    return False


def says(screen: str, text: str) -> bool:
    """The text is on screen, however a panel or a notification wrapped it: read as columns from
    each starting column, to the right edge or to the next panel border."""
    squash = lambda value: re.sub(r"[\s│╭╮╰╯▊▎▏▌▔▁─]", "", value)  # noqa: E731
    rows, target = screen.splitlines(), squash(text)
    width = max(map(len, rows), default=0)
    return any(target in squash("".join(cut(row[start:]) for row in rows))
               for start in range(width) for cut in (lambda rest: rest, lambda rest: rest.split("│")[0]))


def ask_typed(terminal: screen_support.Terminal, question: str, focus: bool = True) -> None:
    """Types the question into the field and sends it once the whole of it shows there: on a loaded
    machine the first keys can arrive before the field has the focus, and are then typed again."""
    for _ in range(3):
        if focus:  # the field keeps the focus after a question
            terminal.press("/")
        terminal.press("C-u")  # whatever part of an earlier try reached the field
        terminal.press("-l", question)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and question not in terminal.screen():
            time.sleep(0.25)
        if question in terminal.screen():
            terminal.press("Enter")
            return
        focus = True
    pytest.fail(f"the question never showed whole in the field; the screen was:\n{terminal.screen()}")


def test_an_engine_server_down_at_start_is_one_line_and_the_app_connects_when_it_comes_up(
        pulse: PulseServer, engine_config_path: Path, tmp_path: Path) -> None:
    port = free_port()
    terminal = start_app(pulse, f"ws://127.0.0.1:{port}", engine_config_path, tmp_path)
    server = None
    try:
        screen = terminal.wait_until(lambda s: "cannot reach the engine server" in s, 120, "the connection failure")
        assert len(re.findall(r"engine server failed: cannot reach", screen)) == 1  # once, not once per attempt
        assert says(screen, "trying again in the background") and "LOADING" in screen
        server = EngineServerProcess(engine_config_path, tmp_path / "server.log", port)
        terminal.wait_until(lambda s: says(s, "connected to the engine server") and "LISTENING" in s, 120,
                            "the app to connect once the server is up")
        terminal.press("r")  # e2e -> asr: that server has no Whisper
        terminal.wait_until(lambda s: says(s, "has not loaded the asr retrieval models"), 60, "the server's refusal")
        assert "rag:e2e" in terminal.screen()  # the status bar keeps the mode
        ask_typed(terminal, "How long should green tea steep?")
        terminal.wait_until(lambda s: "total" in s and "LISTENING" in s, 300, "the answer")

        server.kill()  # between turns: noticed at once, mended in the background
        terminal.wait_until(lambda s: says(s, "lost the connection to the engine server"), 60, "the loss")
        server = EngineServerProcess(engine_config_path, tmp_path / "server2.log", port)
        terminal.wait_until(lambda s: says(s, "reconnected to the engine server"), 120, "the reconnection")
        ask_typed(terminal, "Are you back?", focus=False)
        terminal.wait_until(lambda s: s.count("Assistant") >= 2 and "LISTENING" in s, 300, "the second answer")
        (log,) = (tmp_path / "sessions").glob("*/turns.jsonl")
        assert [t["question"] for t in read_turns(log)] == ["How long should green tea steep?", "Are you back?"]
        terminal.press("C-q")  # the question field has the focus: q would be typed there
        terminal.wait_until(lambda s: "LISTENING" not in s, 60, "the app to quit")
    finally:
        terminal.tmux("kill-server")
        if server is not None:
            server.stop()
