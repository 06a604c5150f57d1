"""A real engine server (`voicechat serve --engine`) in another process on loopback, on the tiny
models, and a config that points a client at it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from voicechat.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "VOICECHAT_TEST_ENGINE_TOKEN"
TOKEN = "test-token-4d1f"
READY = "serving the engine on "


class EngineServerProcess:
    def __init__(self, config: Path, log: Path, port: int = 0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), TOKEN_ENV: TOKEN}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "voicechat", "--config", str(config), "--threads", "1", "serve", "--engine",
             "--port", str(port), "--token-env", TOKEN_ENV],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
        line = ""
        while not line.startswith(READY):  # the server prints this once it listens
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"the engine server did not start:\n{log.read_text()}")
        self.url = line[len(READY):].split()[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def engine_config_path(tiny_rag_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models with the index of knowledge/, greedy sampling (a reply is a function of its
    prompt), and small limits for the fault tests."""
    data = yaml.safe_load(Path(tiny_rag_config.source).read_text())
    data["generation"] = {**data.get("generation", {}), "temperature": 0.0}
    data["serve"] = {"max_frame_bytes": 1024 * 1024, "max_utterance_s": 5.0}
    data["sessions"] = {"dir": str(tmp_path_factory.mktemp("engine-sessions"))}
    path = tmp_path_factory.mktemp("engine") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def engine_config(engine_config_path: Path) -> Config:
    return load_config(engine_config_path)


@pytest.fixture(scope="module")
def engine_server(engine_config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineServerProcess]:
    server = EngineServerProcess(engine_config_path, tmp_path_factory.mktemp("engine-log") / "server.log")
    yield server
    server.stop()
