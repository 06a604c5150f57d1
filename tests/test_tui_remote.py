"""The conversation screen in a real terminal (tmux) with a virtual microphone, its engine in
another process: a spoken question becomes a turn on screen with the network stage in its timings,
and the session log on this machine keeps it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from tests import test_tui_terminal as screen_support
from tests.support.engine_server import TOKEN, TOKEN_ENV, EngineServerProcess
from tests.support.pulse import MIC_RATE, PulseServer
from tests.support.speech import espeak_available, speak
from voicechat.sessions import read_turns

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.audio]


@pytest.fixture
def terminal(pulse: PulseServer, engine_server: EngineServerProcess, engine_config_path: Path,
             tmp_path: Path) -> Iterator[screen_support.Terminal]:
    if shutil.which("tmux") is None or not espeak_available():
        pytest.skip("tmux and espeak-ng are needed")
    config = yaml.safe_load(engine_config_path.read_text())
    config["sessions"] = {"dir": str(tmp_path / "sessions")}
    config["engine"] = {"url": engine_server.url, "token_env": TOKEN_ENV}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    name = f"voicechat-remote-test-{os.getpid()}"
    env = {**pulse.env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "XDG_STATE_HOME": str(tmp_path / "state"),
           TOKEN_ENV: TOKEN}
    command = f"{sys.executable} -m voicechat --config {tmp_path / 'config.yaml'}; sleep 30"
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "-s", name, "-x", "160", "-y", "45", command],
                   env=env, check=True, timeout=30)
    terminal = screen_support.Terminal(name)
    yield terminal
    terminal.tmux("kill-server")


def test_spoken_question_to_a_remote_engine_becomes_a_turn_on_screen(pulse: PulseServer, terminal,
                                                                     tmp_path: Path) -> None:
    terminal.wait_until(lambda s: "LISTENING" in s, 120, "the app to connect and listen")
    question = speak("How long should green tea steep?")
    padded = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), question, np.zeros(MIC_RATE * 2, np.float32)])
    pulse.play(padded, MIC_RATE).wait(timeout=60)
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
