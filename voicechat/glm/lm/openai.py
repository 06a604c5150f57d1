"""An OpenAI-compatible completions endpoint (vLLM or SGLang serving GLM-4-Voice-9B).

The prompt goes as token ids, so no text round trip can change it. Each streamed chunk's new ids
are read from ``choices[0].token_ids`` (vLLM's ``return_token_ids``); servers that only return
``logprobs.tokens`` as ``token_id:N`` (``return_tokens_as_token_ids``) work too; as a last resort
the text, with special tokens kept, is tokenized back (audio tokens render as ``<|audio_N|>``).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

from voicechat.errors import BackendError
from voicechat.glm.lm import SamplingParams
from voicechat.glm.lm.http_stream import (
    HttpSettings, StreamIncomplete, get_json, post_lines, stream_with_retries,
)
from voicechat.glm.text_tokenizer import GlmTextTokenizer


class OpenAIBackend:
    def __init__(self, url: str, tokenizer: GlmTextTokenizer, settings: HttpSettings, model: str | None = None):
        self.base = url.rstrip("/")
        self._tokenizer = tokenizer
        self._settings = settings
        self._model = model

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        return stream_with_retries(lambda: self._attempt(prompt_ids, params), self._settings, cancel,
                                   self.base + "/completions")

    def close(self) -> None:
        pass

    def model_name(self) -> str:
        """The configured model, else the first one the server lists."""
        if self._model is None:
            try:
                self._model = str(get_json(self.base + "/models", self._settings)["data"][0]["id"])
            except (KeyError, IndexError, TypeError, ValueError):
                raise BackendError(f"{self.base}/models lists no model; set backend.model") from None
        return self._model

    def request_body(self, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name(),
            "prompt": list(prompt_ids),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stop_token_ids": list(params.stop_ids),
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "return_token_ids": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _attempt(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        body = self.request_body(prompt_ids, params)
        for line in post_lines(self.base + "/completions", body, self._settings):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators and SSE comments
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield from self._chunk_ids(data)
        raise StreamIncomplete("the event stream ended without [DONE]")

    def _chunk_ids(self, data: bytes) -> list[int]:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendError(f"{self.base} sent an event that is not JSON: {data[:80]!r}") from None
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise BackendError(f"{self.base} failed mid-reply ({message}); see the server's log, then ask again")
        choices = chunk.get("choices") or []
        if not choices:
            return []
        choice = choices[0]
        ids = _ids_of(choice)
        if ids is None:
            ids = self._tokenizer.encode_with_special(choice.get("text") or "")
        stop_reason = choice.get("stop_reason")
        if choice.get("finish_reason") == "stop" and isinstance(stop_reason, int) and stop_reason not in ids:
            ids.append(stop_reason)  # vLLM leaves the matched stop token out of the ids
        return ids


def _ids_of(choice: dict[str, Any]) -> list[int] | None:
    if isinstance(choice.get("token_ids"), list):
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    return None
