"""Client of the reference GLM-4-Voice model server protocol.

POST /generate_stream with ``{"prompt", "temperature", "top_p", "max_new_tokens"}``; the answer is
one JSON object per line, ``{"token_id": N, "error_code": 0}``, or ``{"text": …, "error_code": 1}``
on failure. The reference server tokenizes ``prompt`` itself (adding [gMASK]<sop>); the ids are
sent too as ``input_ids``, which `voicechat serve` uses as they are and the reference ignores.
"""

from __future__ import annotations

import json
import threading
from typing import Iterator

from voicechat.errors import BackendError
from voicechat.glm.lm import SamplingParams
from voicechat.glm.lm.http_stream import HttpSettings, StreamIncomplete, post_lines, stream_with_retries
from voicechat.glm.text_tokenizer import GlmTextTokenizer


class GlmServerBackend:
    def __init__(self, url: str, tokenizer: GlmTextTokenizer, settings: HttpSettings):
        self.url = url.rstrip("/") + "/generate_stream"
        self._tokenizer = tokenizer
        self._settings = settings

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        body = {
            "prompt": self._prompt_text(prompt_ids),
            "input_ids": list(prompt_ids),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return stream_with_retries(lambda: self._attempt(body, params), self._settings, cancel, self.url)

    def close(self) -> None:
        pass

    def _prompt_text(self, prompt_ids: list[int]) -> str:
        special = self._tokenizer.special
        ids = prompt_ids[2:] if prompt_ids[:2] == [special.gmask, special.sop] else prompt_ids
        return self._tokenizer.decode(ids)

    def _attempt(self, body: dict, params: SamplingParams) -> Iterator[int]:
        count = 0
        last = None
        for line in post_lines(self.url, body, self._settings):
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                error_code = int(message.get("error_code", 0))
            except (ValueError, AttributeError, TypeError):
                raise BackendError(f"{self.url} sent something that is not a token line: {line[:80]!r}") from None
            if error_code != 0:
                raise BackendError(f"the model server reported an error: {message.get('text', 'no details')}")
            last = message.get("token_id")
            if not isinstance(last, int):
                raise BackendError(f"{self.url} sent a line without a token id: {line[:80]!r}")
            count += 1
            yield last
        if last not in params.stop_ids and count < params.max_new_tokens:
            raise StreamIncomplete(f"the stream ended after {count} tokens without an end token")
