"""`voicechat` in a real terminal (tmux) with a virtual microphone: a spoken question becomes a
completed turn on screen, with its sources and timings, and nothing but the app draws on the screen
(a speaker underrun makes alsa-lib write to stderr: it goes to a log file instead)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile
import yaml

from tests.support.pulse import MIC_RATE, SPEAKER_RATE, PulseServer, start_private_server
from tests.support.speech import espeak_available, speak
from voicechat.cli import main
from voicechat.sessions import read_turns

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.audio]

# What C libraries and Python write to stderr, should it reach the screen
FOREIGN = re.compile(r"ALSA lib|underrun occurred|Traceback \(most recent call last\)")


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer]:
    server = start_private_server()
    yield server
    server.stop()


class Terminal:
    """A tmux session on a tmux server of its own: a server started earlier, by another test run,
    would give the app that run's environment (its sound server, its PYTHONPATH)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def tmux(self, *args: str, check: bool = False) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, check=check,
                              timeout=30).stdout

    def screen(self) -> str:
        """The screen now; fails the test if anything but the app drew on it."""
        screen = self.tmux("capture-pane", "-p", "-t", self.name)
        if FOREIGN.search(screen):
            pytest.fail(f"something other than the app wrote on the screen:\n{screen}")
        return screen

    def wait_until(self, condition: Callable[[str], bool], timeout: float, what: str) -> str:
        """Polls the screen: a terminal offers no event to wait on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {what}; the screen was:\n{self.screen()}")

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys, check=True)

    def suspend_app(self, seconds: float) -> None:
        """Suspends the app as Ctrl-Z does and resumes it after ``seconds``, as `fg` does: meanwhile
        the speaker's stream runs dry, and alsa-lib reports the underrun on stderr."""
        shell = self.tmux("display-message", "-p", "-t", self.name, "#{pane_pid}", check=True).strip()
        (app,) = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True, timeout=10).stdout.split()
        os.kill(int(app), signal.SIGTSTP)  # Textual leaves application mode, then stops the process
        try:
            deadline = time.monotonic() + 30
            while process_state(int(app)) != "T":  # a process offers no event to wait on
                if time.monotonic() > deadline:
                    pytest.fail("the app did not stop on SIGTSTP")
                time.sleep(0.05)
            time.sleep(seconds)  # the stall itself
        finally:
            os.kill(int(app), signal.SIGCONT)


def process_state(pid: int) -> str:
    """R running, S sleeping, T stopped... (the field after the command name in /proc/PID/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def open_terminal(pulse: PulseServer, models_dir: Path, tmp_path: Path) -> Terminal:
    """`voicechat` in tmux on the models in ``models_dir``, with an index of knowledge/ and e2e retrieval."""
    if shutil.which("tmux") is None or not espeak_available():
        pytest.skip("tmux and espeak-ng are needed")
    config = yaml.safe_load((models_dir / "config.yaml").read_text())
    config["sessions"] = {"dir": str(tmp_path / "sessions")}
    config["retrieval"] = {"rag": "e2e", "index_dir": str(tmp_path / "index"), "knowledge_dir": str(REPO / "knowledge")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["--config", str(tmp_path / "config.yaml"), "index", str(REPO / "knowledge")]) == 0
    name = f"voicechat-test-{os.getpid()}"
    env = {**pulse.env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "XDG_STATE_HOME": str(tmp_path / "state")}
    command = f"{sys.executable} -m voicechat --config {tmp_path / 'config.yaml'}; sleep 30"
    subprocess.run(["tmux", "-L", name, "new-session", "-d", "-s", name, "-x", "160", "-y", "45", command],
                   env=env, check=True, timeout=30)
    return Terminal(name)


@pytest.fixture
def terminal(pulse: PulseServer, tiny_models_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    terminal = open_terminal(pulse, tiny_models_dir, tmp_path)
    yield terminal
    terminal.tmux("kill-server")


@pytest.fixture
def qwen_terminal(pulse: PulseServer, tiny_qwen_models_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    terminal = open_terminal(pulse, tiny_qwen_models_dir, tmp_path)
    yield terminal
    terminal.tmux("kill-server")


def say(pulse: PulseServer, text: str) -> np.ndarray:
    """Speaks ``text`` into the virtual microphone, with silence around it; returns the speech."""
    question = speak(text)
    padded = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), question, np.zeros(MIC_RATE * 2, np.float32)])
    pulse.play(padded, MIC_RATE).wait(timeout=60)
    return question


def test_spoken_question_becomes_a_turn_on_screen(pulse: PulseServer, terminal: Terminal, tmp_path: Path) -> None:
    terminal.wait_until(lambda s: "LISTENING" in s, 180, "the app to load and listen")
    terminal.suspend_app(1.0)
    terminal.wait_until(lambda s: re.search(r"audio warnings: [1-9]", s), 60, "the underrun to be counted")
    question = say(pulse, "How long should green tea steep?")
    screen = terminal.wait_until(lambda s: "total" in s and "LISTENING" in s, 300, "the turn to complete")
    assert "Assistant" in screen
    assert re.search(r"^\W*1\s+0\.\d{3}\s+✔", screen, re.M)  # the sources panel: rank, score, used
    assert re.search(r"first audio\s+█+\s+\d+", screen)  # the timings panel has the turn
    (log,) = (tmp_path / "sessions").glob("*/turns.jsonl")
    (turn,) = read_turns(log)
    assert turn["question"] is None and turn["user_audio"]  # it was spoken, and the audio kept
    heard, rate = soundfile.read(log.parent / turn["user_audio"])
    assert rate == MIC_RATE and abs(heard.size / rate - question.size / MIC_RATE) < 1.0
    assert "underrun occurred" in (tmp_path / "state" / "voicechat" / "log" / "chat-stderr.log").read_text()
    terminal.press("q")
    terminal.wait_until(lambda s: "LISTENING" not in s, 60, "the app to quit")


def test_qwen_answers_a_spoken_question_on_screen_and_plays_the_reply(pulse: PulseServer, qwen_terminal: Terminal,
                                                                     tmp_path: Path) -> None:
    qwen_terminal.wait_until(lambda s: "LISTENING" in s, 180, "the app to load Qwen2.5-Omni and listen")
    recording = pulse.record()
    try:
        assert recording.wait_for_bytes(SPEAKER_RATE // 10), "the speaker's monitor did not start"
        say(pulse, "How long should green tea steep?")
        screen = qwen_terminal.wait_until(lambda s: "total" in s and "LISTENING" in s, 300, "the turn to complete")
        played = recording.wait_for_sound(0.2, SPEAKER_RATE, timeout=60)
    finally:
        heard = recording.stop()
    assert "Assistant" in screen
    assert re.search(r"^\W*1\s+0\.\d{3}\s+✔", screen, re.M)  # retrieval works the same with either voice model
    (log,) = (tmp_path / "sessions").glob("*/turns.jsonl")
    (turn,) = read_turns(log)
    assert turn["user_audio"] and turn["reply_text"].strip()
    shown = next(word for word in turn["reply_text"].split() if word.isprintable() and len(word) > 2)
    assert shown in screen.replace("\n", " ")  # the reply's text is on screen
    assert played and np.abs(heard).max() > 1e-3  # and its audio went to the speaker
    qwen_terminal.press("q")
    qwen_terminal.wait_until(lambda s: "LISTENING" not in s, 60, "the app to quit")
