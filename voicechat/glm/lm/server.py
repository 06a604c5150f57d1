"""Serve a backend over the reference GLM-4-Voice model server protocol (see glm_server.py), so a
GPU machine can answer a laptop: ``voicechat serve`` on one, ``backend.kind: glm-server`` on the
other. Requests carry ``input_ids`` (voicechat) or a ``prompt`` string (the reference web demo).
Binds to loopback unless told otherwise; an optional bearer token guards every request.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from voicechat.config import ServeConfig
from voicechat.errors import VoicechatError
from voicechat.glm.lm import LMBackend, SamplingParams
from voicechat.glm.text_tokenizer import GlmTextTokenizer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
# The reference server's defaults for absent fields.
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 256}


class BadRequest(Exception):
    pass


class LMServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: LMBackend, tokenizer: GlmTextTokenizer, host: str = "127.0.0.1",
                 port: int = 10000, token: str | None = None, vocab_size: int | None = None,
                 max_new_tokens: int = ServeConfig().max_new_tokens):
        self.backend = backend
        self.tokenizer = tokenizer
        self.token = token
        self.vocab_size = vocab_size or tokenizer.vocab_size
        self.max_new_tokens = max_new_tokens  # the most a request may ask for (serve.max_new_tokens)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def params_and_ids(self, request: dict[str, Any]) -> tuple[list[int], SamplingParams]:
        """Prompt ids and sampling settings from a request body; BadRequest if invalid."""
        if not isinstance(request, dict):
            raise BadRequest("expected a JSON object")
        ids = request.get("input_ids")
        if ids is None:
            prompt = request.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise BadRequest("give 'prompt' (text) or 'input_ids'")
            special = self.tokenizer.special
            ids = [special.gmask, special.sop, *self.tokenizer.encode_with_special(prompt)]
        if (not isinstance(ids, list) or not ids
                or not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in ids)):
            raise BadRequest(f"input_ids must be a non-empty list of ids below {self.vocab_size}")
        try:
            params = SamplingParams(
                temperature=float(request.get("temperature", DEFAULTS["temperature"])),
                top_p=float(request.get("top_p", DEFAULTS["top_p"])),
                max_new_tokens=int(request.get("max_new_tokens",
                                               min(DEFAULTS["max_new_tokens"], self.max_new_tokens))),
                stop_ids=self.tokenizer.special.stop_ids,
                seed=None if request.get("seed") is None else int(request["seed"]),
            )
        except (TypeError, ValueError):
            raise BadRequest("temperature, top_p, max_new_tokens and seed must be numbers") from None
        if not (0 <= params.temperature <= 100 and 0 < params.top_p <= 1 and params.max_new_tokens > 0):
            raise BadRequest("temperature must be >= 0, top_p in (0, 1], max_new_tokens > 0")
        if params.max_new_tokens > self.max_new_tokens:
            raise BadRequest(f"max_new_tokens {params.max_new_tokens} is above this server's limit of "
                             f"{self.max_new_tokens} (serve.max_new_tokens); ask for fewer")
        return ids, params


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked responses: a cut stream is detectable by the client
    server: LMServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/health":
            return self._reply(404, {"error": "not found"})
        if self._authorised():
            self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/generate_stream":
            return self._reply(404, {"error": "not found"})
        if not self._authorised():
            return
        try:
            ids, params = self.server.params_and_ids(self._read_json())
        except BadRequest as error:
            return self._reply(400, {"error": str(error)})
        self._stream(ids, params)

    def _stream(self, ids: list[int], params: SamplingParams) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        cancel = threading.Event()
        tokens = self.server.backend.stream(ids, params, cancel)
        try:
            self._send_tokens(tokens)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            cancel.set()  # the client went away: stop generating for it
            self.close_connection = True
        finally:
            close = getattr(tokens, "close", None)
            if close:
                close()

    def _send_tokens(self, tokens: Any) -> None:
        try:
            for token in tokens:
                self._chunk({"token_id": token, "error_code": 0})
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as error:  # noqa: BLE001 - the protocol's error line, as the reference sends
            log.warning("generation failed: %s", error, exc_info=not isinstance(error, VoicechatError))
            self._chunk({"text": "Server Error", "error_code": 1})

    def _chunk(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self._reply(401, {"error": "missing or wrong bearer token"})
        return False

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if not 0 < length <= MAX_BODY_BYTES:
            raise BadRequest("the request body is empty or too large")
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            raise BadRequest("the request body is not JSON") from None

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")  # the request body may be unread
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
