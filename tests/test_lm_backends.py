"""The three LM backends end to end on loopback, with the tiny random model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from voicechat.errors import BackendError
from voicechat.glm.lm import SamplingParams
from voicechat.glm.lm.glm_server import GlmServerBackend
from voicechat.glm.lm.http_stream import HttpSettings
from voicechat.glm.lm.local import LocalBackend
from voicechat.glm.lm.openai import OpenAIBackend
from voicechat.glm.lm.server import LMServer
from voicechat.glm.prompt import Conversation, PromptBuilder
from voicechat.glm.text_tokenizer import GlmTextTokenizer

REPO = Path(__file__).resolve().parents[1]
FAST = HttpSettings(connect_timeout_s=2, read_timeout_s=5, retries=2, retry_delay_s=0.01)


@pytest.fixture(scope="module")
def tokenizer(tiny_lm: Path) -> GlmTextTokenizer:
    return GlmTextTokenizer.from_pretrained(tiny_lm)


@pytest.fixture(scope="module")
def local(tiny_lm: Path) -> LocalBackend:
    return LocalBackend.from_pretrained(tiny_lm, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prompt(tokenizer: GlmTextTokenizer) -> list[int]:
    return PromptBuilder(tokenizer).build(Conversation(), speech_tokens=list(range(30))).ids


def greedy(n: int, stop_ids: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=n, stop_ids=stop_ids)


def serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def lm_server(local: LocalBackend, tokenizer: GlmTextTokenizer) -> Iterator[str]:
    yield from serve(LMServer(local, tokenizer, "127.0.0.1", 0, vocab_size=local.vocab_size))


# --- local ----------------------------------------------------------------------------------------


def test_local_greedy_stream_is_the_argmax_of_full_forward_passes(local: LocalBackend, prompt: list[int]) -> None:
    local.close()
    streamed = list(local.stream(prompt, greedy(6), threading.Event()))
    ids = list(prompt)
    model = local.loaded.model
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert streamed == ids[len(prompt):]


def test_local_stops_at_a_stop_token_and_yields_it_last(local: LocalBackend, prompt: list[int]) -> None:
    free = list(local.stream(prompt, greedy(5), threading.Event()))
    stopped = list(local.stream(prompt, greedy(5, stop_ids=(free[2],)), threading.Event()))
    assert stopped == free[: free.index(free[2]) + 1]


def test_local_next_turn_reuses_the_cached_prefix_and_gives_the_same_tokens(local: LocalBackend,
                                                                             tokenizer: GlmTextTokenizer,
                                                                             prompt: list[int]) -> None:
    local.close()
    reply = list(local.stream(prompt, greedy(4), threading.Event()))
    assert local.cached_tokens == len(prompt) + 3  # the last sampled token is not computed yet
    second = prompt + reply + [tokenizer.special.user] + tokenizer.encode("\nand then?")
    cached = list(local.stream(second, greedy(4), threading.Event()))
    local.close()
    fresh = list(local.stream(second, greedy(4), threading.Event()))
    assert cached == fresh


def test_local_sampling_with_a_seed_is_reproducible(local: LocalBackend, prompt: list[int]) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=8, seed=3)
    assert list(local.stream(prompt, params, threading.Event())) == list(local.stream(prompt, params, threading.Event()))


def test_local_cancel_stops_generation_within_one_token(local: LocalBackend, prompt: list[int]) -> None:
    local.close()
    cancel = threading.Event()
    received = []
    for token in local.stream(prompt, greedy(1000), cancel):
        received.append(token)
        if len(received) == 3:
            cancel.set()
    assert len(received) == 3
    # the worker has stopped long before max_new_tokens (it may have run ahead of the reader)
    assert local.cached_tokens < len(prompt) + 100


def test_local_cancel_before_the_first_token_generates_nothing(local: LocalBackend, prompt: list[int]) -> None:
    local.close()
    cancel = threading.Event()
    cancel.set()
    assert list(local.stream(prompt, greedy(1000), cancel)) == []
    assert local.cached_tokens <= len(prompt) + 1


def test_local_abandoned_stream_frees_the_model(local: LocalBackend, prompt: list[int]) -> None:
    stream = local.stream(prompt, greedy(1000), threading.Event())
    next(stream)
    stream.close()
    assert "lm-generate" not in [t.name for t in threading.enumerate()]  # closing waited for the worker
    assert len(list(local.stream(prompt, greedy(2), threading.Event()))) == 2


# --- glm-server: voicechat's own server -------------------------------------------------------------


def test_glm_server_backend_streams_what_the_local_model_generates(local: LocalBackend, tokenizer: GlmTextTokenizer,
                                                                   prompt: list[int], lm_server: str) -> None:
    stop = tokenizer.special.stop_ids
    expected = list(local.stream(prompt, greedy(7, stop), threading.Event()))
    remote = GlmServerBackend(lm_server, tokenizer, FAST)
    assert list(remote.stream(prompt, greedy(7, stop), threading.Event())) == expected


def test_server_accepts_the_reference_demo_text_prompt(local: LocalBackend, tokenizer: GlmTextTokenizer,
                                                       prompt: list[int], lm_server: str) -> None:
    import http.client

    expected = list(local.stream(prompt, greedy(5, tokenizer.special.stop_ids), threading.Event()))
    text = tokenizer.decode(prompt[2:])  # the demo sends text without [gMASK]<sop>
    host, port = lm_server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/generate_stream",
                       body=json.dumps({"prompt": text, "temperature": 0, "top_p": 1, "max_new_tokens": 5}))
    lines = connection.getresponse().read().decode().splitlines()
    assert [json.loads(line)["token_id"] for line in lines] == expected
    assert all(json.loads(line)["error_code"] == 0 for line in lines)


def test_server_rejects_bad_requests(lm_server: str, tokenizer: GlmTextTokenizer) -> None:
    import http.client

    host, port = lm_server.removeprefix("http://").split(":")
    for body in ({"input_ids": [10**9]}, {"prompt": ""}, {"input_ids": [1], "top_p": "x"}):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", "/generate_stream", body=json.dumps(body))
        assert connection.getresponse().status == 400


def test_server_with_a_token_refuses_clients_without_it(local: LocalBackend, tokenizer: GlmTextTokenizer,
                                                        prompt: list[int]) -> None:
    server = LMServer(local, tokenizer, "127.0.0.1", 0, token="s3cret", vocab_size=local.vocab_size)
    for url in serve(server):
        with pytest.raises(BackendError, match="refused"):
            list(GlmServerBackend(url, tokenizer, FAST).stream(prompt, greedy(2), threading.Event()))
        authorised = HttpSettings(connect_timeout_s=2, read_timeout_s=5, retries=0, token="s3cret")
        assert len(list(GlmServerBackend(url, tokenizer, authorised).stream(prompt, greedy(2), threading.Event()))) == 2


def test_cancelling_a_remote_stream_ends_it(tokenizer: GlmTextTokenizer, prompt: list[int], lm_server: str) -> None:
    cancel = threading.Event()
    received = []
    for token in GlmServerBackend(lm_server, tokenizer, FAST).stream(prompt, greedy(500), cancel):
        received.append(token)
        if len(received) == 2:
            cancel.set()
    assert len(received) == 2


class FailingBackendDouble:
    """Test double of an LM backend whose generation fails after one token."""

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        yield 5
        raise BackendError("the GPU fell off the bus")

    def close(self) -> None:
        pass


def test_server_reports_a_failed_generation_with_the_protocol_error_line(tokenizer: GlmTextTokenizer,
                                                                         prompt: list[int]) -> None:
    for url in serve(LMServer(FailingBackendDouble(), tokenizer, "127.0.0.1", 0)):
        with pytest.raises(BackendError, match="Server Error"):
            list(GlmServerBackend(url, tokenizer, FAST).stream(prompt, greedy(5), threading.Event()))


@pytest.mark.slow
def test_voicechat_serve_command_serves_the_tiny_model(tiny_lm: Path, tokenizer: GlmTextTokenizer,
                                                       local: LocalBackend, prompt: list[int], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"offline: true\nmodels:\n  lm:\n    source: {tiny_lm}\n    device: cpu\n    dtype: float32\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VC_TEST_TOKEN": "tok"}
    command = [sys.executable, "-m", "voicechat", "--config", str(config), "serve", "--port", "0",
               "--token-env", "VC_TEST_TOKEN"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving" in line, process.stderr.read()
        url = line.split(" on ")[1].split("/generate_stream")[0]
        settings = HttpSettings(connect_timeout_s=5, read_timeout_s=30, retries=0, token="tok")
        stop = tokenizer.special.stop_ids
        remote = list(GlmServerBackend(url, tokenizer, settings).stream(prompt, greedy(5, stop), threading.Event()))
        assert remote == list(local.stream(prompt, greedy(5, stop), threading.Event()))
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- glm-server protocol failures: a scripted test double ------------------------------------------


class ScriptedServer(ThreadingHTTPServer):
    """Test double of a model server: each request runs the next scripted behaviour."""

    daemon_threads = True

    def __init__(self, behaviours: list[Callable[[BaseHTTPRequestHandler], None]]):
        self.behaviours = behaviours
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.server.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.server.behaviours[min(len(self.server.requests), len(self.server.behaviours)) - 1](self)

    do_GET = do_POST  # noqa: N815


def send_lines(lines: list[bytes], finish: bool = True) -> Callable[[BaseHTTPRequestHandler], None]:
    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for line in lines:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            handler.wfile.flush()
        if finish:
            handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True
    return behaviour


def status(code: int) -> Callable[[BaseHTTPRequestHandler], None]:
    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return behaviour


def stall_after(lines: list[bytes]) -> Callable[[BaseHTTPRequestHandler], None]:
    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        send_lines(lines, finish=False)(handler)
        handler.server.release.wait(30)
    return behaviour


def token_lines(ids: list[int]) -> list[bytes]:
    return [json.dumps({"token_id": i, "error_code": 0}).encode() + b"\n" for i in ids]


def run_scripted(behaviours: list, tokenizer: GlmTextTokenizer, prompt: list[int],
                 settings: HttpSettings = FAST, params: SamplingParams | None = None) -> tuple[list[int], ScriptedServer]:
    server = ScriptedServer(behaviours)
    params = params or greedy(50, tokenizer.special.stop_ids)
    for url in serve(server):
        try:
            return list(GlmServerBackend(url, tokenizer, settings).stream(prompt, params, threading.Event())), server
        finally:
            server.release.set()
    raise AssertionError("unreachable")


def test_glm_server_retries_before_the_first_token(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    user = tokenizer.special.user
    tokens, server = run_scripted([status(503), send_lines(token_lines([5, 6, user]))], tokenizer, prompt)
    assert tokens == [5, 6, user]
    assert len(server.requests) == 2
    assert server.requests[1]["input_ids"] == prompt
    assert server.requests[1]["prompt"] == tokenizer.decode(prompt[2:])


def test_glm_server_cut_mid_stream_is_a_clear_error(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    with pytest.raises(BackendError, match="cut after 3 tokens"):
        run_scripted([send_lines(token_lines([5, 6, 7]), finish=False)], tokenizer, prompt)


def test_glm_server_stream_ending_without_an_end_token_is_a_clear_error(tokenizer: GlmTextTokenizer,
                                                                         prompt: list[int]) -> None:
    with pytest.raises(BackendError, match="cut after 2 tokens"):
        run_scripted([send_lines(token_lines([5, 6]))], tokenizer, prompt)


def test_glm_server_stream_reaching_max_new_tokens_is_complete(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    tokens, _ = run_scripted([send_lines(token_lines([5, 6]))], tokenizer, prompt, params=greedy(2))
    assert tokens == [5, 6]


def test_glm_server_error_line_is_reported(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    error = json.dumps({"text": "Server Error", "error_code": 1}).encode() + b"\n"
    with pytest.raises(BackendError, match="Server Error"):
        run_scripted([send_lines(token_lines([5]) + [error])], tokenizer, prompt)


def test_glm_server_read_timeout_after_tokens_is_a_cut(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    impatient = HttpSettings(connect_timeout_s=2, read_timeout_s=0.3, retries=2, retry_delay_s=0.01)
    with pytest.raises(BackendError, match="cut after 1 tokens"):
        run_scripted([stall_after(token_lines([5]))], tokenizer, prompt, settings=impatient)


def test_unreachable_server_fails_after_the_retries(tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = GlmServerBackend(f"http://127.0.0.1:{port}", tokenizer, FAST)
    with pytest.raises(BackendError, match="after 3 attempts.*connection refused"):
        list(backend.stream(prompt, greedy(3), threading.Event()))


# --- openai: an OpenAI-compatible test double serving the local model ---------------------------------


class FakeCompletionsServer(ThreadingHTTPServer):
    """Test double of vLLM's /v1/completions: streams the local model's ids in SSE chunks, in the
    layout chosen by ``style`` (token_ids, logprobs token_id:N, or text only)."""

    daemon_threads = True

    def __init__(self, local: LocalBackend, tokenizer: GlmTextTokenizer, style: str = "token_ids", done: bool = True):
        self.local, self.tokenizer, self.style, self.done = local, tokenizer, style, done
        self.requests: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _FakeCompletionsHandler)


class _FakeCompletionsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeCompletionsServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        data = json.dumps({"object": "list", "data": [{"id": "glm-4-voice-9b"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(request)
        params = SamplingParams(request["temperature"], request["top_p"], request["max_tokens"],
                                tuple(request["stop_token_ids"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        tokens = list(self.server.local.stream(request["prompt"], params, threading.Event()))
        stop = tokens[-1] if tokens and tokens[-1] in params.stop_ids else None
        if stop is not None:
            tokens = tokens[:-1]  # as vLLM: the stop token is not part of the output
        for n, token in enumerate(tokens):
            last = n == len(tokens) - 1
            choice = {"index": 0, "text": self.server.tokenizer.decode([token]),
                      "finish_reason": ("stop" if stop is not None else "length") if last else None,
                      "stop_reason": stop if last else None}
            if self.server.style == "token_ids":
                choice["token_ids"] = [token]
            elif self.server.style == "logprobs":
                choice["logprobs"] = {"tokens": [f"token_id:{token}"], "token_logprobs": [-0.1]}
            self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            self.wfile.flush()
        if self.server.done:
            self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


@pytest.mark.parametrize("style", ["token_ids", "logprobs", "text"])
def test_openai_backend_streams_the_model_tokens(local: LocalBackend, tokenizer: GlmTextTokenizer,
                                                 prompt: list[int], style: str) -> None:
    stop = tokenizer.special.stop_ids
    expected = list(local.stream(prompt, greedy(6, stop), threading.Event()))
    server = FakeCompletionsServer(local, tokenizer, style)
    for url in serve(server):
        backend = OpenAIBackend(url + "/v1", tokenizer, FAST)
        received = list(backend.stream(prompt, greedy(6, stop), threading.Event()))
    if style == "text":  # text is re-tokenized: exact for special and audio tokens
        special = tokenizer.special
        assert [t for t in received if special.is_audio(t)] == [t for t in expected if special.is_audio(t)]
    else:
        assert received == expected
    request = server.requests[0]
    assert request["prompt"] == prompt
    assert request["model"] == "glm-4-voice-9b"
    assert request["stream"] is True
    assert request["skip_special_tokens"] is False and request["spaces_between_special_tokens"] is False
    assert request["stop_token_ids"] == list(stop)
    assert request["return_token_ids"] is True


def test_openai_stream_without_done_is_a_cut(local: LocalBackend, tokenizer: GlmTextTokenizer,
                                             prompt: list[int]) -> None:
    server = FakeCompletionsServer(local, tokenizer, done=False)
    for url in serve(server):
        backend = OpenAIBackend(url + "/v1", tokenizer, FAST, model="m")
        with pytest.raises(BackendError, match="cut after 4 tokens"):
            list(backend.stream(prompt, greedy(4), threading.Event()))


# --- choosing a backend from the config -------------------------------------------------------------


def test_backend_config_selects_the_backend(tokenizer: GlmTextTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicechat.config import BackendConfig
    from voicechat.errors import ConfigError
    from voicechat.glm.lm import DEFAULT_GLM_SERVER_URL, open_backend

    server = open_backend(BackendConfig(kind="glm-server"), tokenizer)
    assert isinstance(server, GlmServerBackend) and server.url == DEFAULT_GLM_SERVER_URL + "/generate_stream"
    monkeypatch.setenv("VC_KEY", "abc")
    remote = open_backend(BackendConfig(kind="openai", url="http://h:8000/v1", model="glm", api_key_env="VC_KEY"),
                          tokenizer)
    assert isinstance(remote, OpenAIBackend) and remote._settings.token == "abc"
    with pytest.raises(ConfigError, match="backend.url"):
        open_backend(BackendConfig(kind="openai"), tokenizer)
    with pytest.raises(ConfigError, match="VC_MISSING"):
        open_backend(BackendConfig(kind="glm-server", api_key_env="VC_MISSING"), tokenizer)


def test_sampling_follows_the_config_and_the_voice_preset() -> None:
    from voicechat.config import load_config

    config = load_config(None, {"generation.temperature": 0.5})
    params = SamplingParams.from_config(config.generation, (1, 2), config.voice_preset("brisk"))
    assert (params.temperature, params.top_p, params.max_new_tokens, params.stop_ids) == (0.5, 0.8, 600, (1, 2))
    assert SamplingParams.from_config(config.generation, (), config.voice_preset("cheerful")).temperature == 0.3
