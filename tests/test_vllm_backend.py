"""The OpenAI backend against a real vLLM server (the CPU build) serving the tiny GLM-4-Voice
checkpoint as published: prompts as token ids, ids streamed back, stop at <|user|>, cancellation
that reaches the server, and a model process that dies mid-reply. (The whole server killed
mid-reply: tests/test_vllm_conversation.py.)"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.vllm import VllmServer
from voicechat.errors import BackendError
from voicechat.glm.lm import SamplingParams
from voicechat.glm.lm.http_stream import HttpSettings
from voicechat.glm.lm.local import LocalBackend
from voicechat.glm.lm.openai import OpenAIBackend
from voicechat.glm.prompt import Conversation, PromptBuilder
from voicechat.glm.text_tokenizer import GlmTextTokenizer

pytestmark = pytest.mark.slow

LONG = 4000  # far more tokens than any test reads: a reply that ran to the end would show


@pytest.fixture(scope="module")
def tokenizer(vllm_lm: Path) -> GlmTextTokenizer:
    return GlmTextTokenizer.from_pretrained(vllm_lm)


@pytest.fixture(scope="module")
def local(vllm_lm: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend.from_pretrained(vllm_lm, device="cpu", dtype="float32")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompt(tokenizer: GlmTextTokenizer) -> list[int]:
    return PromptBuilder(tokenizer).build(Conversation(), speech_tokens=list(range(40))).ids


def settings(token: str | None) -> HttpSettings:
    return HttpSettings(connect_timeout_s=5, read_timeout_s=60, retries=1, retry_delay_s=0.05, token=token)


@pytest.fixture
def backend(vllm_server: VllmServer, tokenizer: GlmTextTokenizer) -> OpenAIBackend:
    return OpenAIBackend(vllm_server.url, tokenizer, settings(vllm_server.api_key))


def greedy(n: int, stop_ids: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=n, stop_ids=stop_ids)


def test_vllm_greedy_reply_equals_the_local_backend_token_for_token(backend: OpenAIBackend, local: LocalBackend,
                                                                    tokenizer: GlmTextTokenizer,
                                                                    prompt: list[int]) -> None:
    params = greedy(48, tokenizer.special.stop_ids)
    served = list(backend.stream(prompt, params, threading.Event()))
    assert served == list(local.stream(prompt, params, threading.Event()))
    assert len(served) == 48
    assert backend.model_name() == "glm-4-voice-9b"  # found in the server's model list


def test_vllm_next_turn_prompt_with_the_previous_reply_equals_the_local_backend(backend: OpenAIBackend,
                                                                                local: LocalBackend,
                                                                                tokenizer: GlmTextTokenizer,
                                                                                prompt: list[int]) -> None:
    reply = list(local.stream(prompt, greedy(20), threading.Event()))
    second = prompt + reply + [tokenizer.special.user] + tokenizer.encode("\nand then?") + [tokenizer.special.assistant]
    assert list(backend.stream(second, greedy(24), threading.Event())) == list(
        local.stream(second, greedy(24), threading.Event()))


def test_vllm_stops_at_a_stop_token_and_it_is_the_last_id(backend: OpenAIBackend, local: LocalBackend,
                                                          tokenizer: GlmTextTokenizer, prompt: list[int]) -> None:
    free = list(local.stream(prompt, greedy(32), threading.Event()))
    stop = free[-1]  # a token this model emits (random weights never reach <|user|>)
    stop_ids = (tokenizer.special.user, stop)
    served = list(backend.stream(prompt, greedy(LONG, stop_ids), threading.Event()))
    assert served == free[: free.index(stop) + 1]


def test_cancelling_mid_reply_stops_generation_on_the_server(backend: OpenAIBackend, vllm_server: VllmServer,
                                                             prompt: list[int]) -> None:
    before = vllm_server.metrics()["vllm:generation_tokens_total"]
    cancel = threading.Event()
    received = []
    for token in backend.stream(prompt, greedy(LONG), cancel):
        received.append(token)
        if len(received) == 3:
            cancel.set()
    assert len(received) == 3
    generated = wait_until_idle(vllm_server)["vllm:generation_tokens_total"] - before
    assert generated < LONG  # the request was aborted: it did not run to max_tokens


def test_a_reply_the_consumer_stops_reading_is_aborted_on_the_server(backend: OpenAIBackend,
                                                                     vllm_server: VllmServer,
                                                                     prompt: list[int]) -> None:
    before = vllm_server.metrics()["vllm:generation_tokens_total"]
    stream = backend.stream(prompt, greedy(LONG), threading.Event())
    next(stream)
    stream.close()
    assert wait_until_idle(vllm_server)["vllm:generation_tokens_total"] - before < LONG


def wait_until_idle(server: VllmServer, timeout_s: float = 60.0) -> dict[str, float]:
    """The server's metrics once no request runs. Another process's state can only be polled."""
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not deadline.wait(0.05):
            metrics = server.metrics()
            if metrics["vllm:num_requests_running"] == 0 and metrics["vllm:num_requests_waiting"] == 0:
                return metrics
    finally:
        timer.cancel()
    raise AssertionError(f"vLLM still runs a request after {timeout_s:.0f} s")


def test_vllm_engine_dying_mid_reply_is_one_clear_error_and_after_a_restart_the_next_turn_works(
        backend: OpenAIBackend, vllm_server: VllmServer, local: LocalBackend, tokenizer: GlmTextTokenizer,
        prompt: list[int]) -> None:
    received = []
    with pytest.raises(BackendError, match=r"/v1 failed mid-reply \(EngineCore .*\); see the server's log, then ask again"):
        for token in backend.stream(prompt, greedy(LONG), threading.Event()):
            received.append(token)
            if len(received) == 3:
                vllm_server.kill_engine_core()  # the HTTP server lives on, without a model
    with pytest.raises(BackendError, match=r"cannot get a reply .* after 2 attempts .*; is the server running"):
        list(backend.stream(prompt, greedy(4), threading.Event()))
    vllm_server.start()
    params = greedy(16, tokenizer.special.stop_ids)
    assert list(backend.stream(prompt, params, threading.Event())) == list(local.stream(prompt, params, threading.Event()))


def test_a_prompt_longer_than_the_server_context_is_refused_with_the_server_reason(backend: OpenAIBackend) -> None:
    with pytest.raises(BackendError, match=r"HTTP 400: This model's maximum context length is 8192 tokens"):
        list(backend.stream([5] * 8300, greedy(2), threading.Event()))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_client_without_the_server_key_is_refused_in_one_line(vllm_server: VllmServer,
                                                                tokenizer: GlmTextTokenizer, prompt: list[int],
                                                                token: str | None) -> None:
    backend = OpenAIBackend(vllm_server.url, tokenizer, settings(token), model="glm-4-voice-9b")
    with pytest.raises(BackendError, match=r"refused the request \(401\); check backend.api_key_env"):
        list(backend.stream(prompt, greedy(2), threading.Event()))
