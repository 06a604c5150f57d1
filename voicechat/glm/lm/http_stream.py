"""Streaming token ids over HTTP: connect and read timeouts, retries until the first token, and
a clear error when a stream breaks after that (the reply cannot be resumed)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit

from voicechat.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from voicechat.config import BackendConfig


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    retries: int = 2
    token: str | None = None  # sent as "Authorization: Bearer <token>"
    retry_delay_s: float = 0.5  # doubled after each failed attempt

    @classmethod
    def from_config(cls, backend: BackendConfig) -> HttpSettings:
        token = None
        if backend.api_key_env:
            token = os.environ.get(backend.api_key_env)
            if not token:
                raise ConfigError(f"backend.api_key_env names {backend.api_key_env}, but that environment variable is empty")
        return cls(backend.connect_timeout_s, backend.read_timeout_s, backend.retries, token)


class StreamIncomplete(Exception):
    """The server ended the response before the reply was complete."""


class HttpStatusError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {_server_message(body)}")
        self.status = status
        self.retriable = status >= 500 or status == 429


def _server_message(body: str) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else the body."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body[:200]
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:400] if message else body[:200]


_TRANSPORT_ERRORS = (OSError, http.client.HTTPException, StreamIncomplete)


def post_lines(url: str, body: dict[str, Any], settings: HttpSettings) -> Iterator[bytes]:
    """POST JSON and yield the response body line by line (chunked or not)."""
    response, connection = _post(url, body, settings, accept="application/x-ndjson, text/event-stream")
    try:
        while line := response.readline():
            yield line
    finally:
        connection.close()


def get_json(url: str, settings: HttpSettings) -> Any:
    connection = _connect(url, settings)
    try:
        connection.request("GET", _path(url), headers=_headers(settings, "application/json"))
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise HttpStatusError(response.status, data.decode(errors="replace"))
        return json.loads(data)
    finally:
        connection.close()


def stream_with_retries(attempt: Callable[[], Iterator[int]], settings: HttpSettings, cancel: threading.Event,
                        server: str) -> Iterator[int]:
    """Run ``attempt`` until it yields a first token, retrying transport failures and 5xx
    answers; after the first token a failure is final (BackendError)."""
    last: Exception | None = None
    for number in range(settings.retries + 1):
        produced = 0
        tokens = attempt()
        try:
            for token in tokens:
                if cancel.is_set():
                    return
                produced += 1
                yield token
            return
        except HttpStatusError as error:
            if error.status in (401, 403):
                raise BackendError(f"{server} refused the request ({error.status}); check backend.api_key_env") from None
            if not error.retriable or produced:
                raise BackendError(f"{server} answered with an error ({error})") from None
            last = error
        except _TRANSPORT_ERRORS as error:
            if produced:
                raise BackendError(
                    f"the reply stream from {server} was cut after {produced} tokens ({_reason(error)}); ask again"
                ) from None
            last = error
        finally:
            tokens.close()  # closes the connection at once: the server stops generating
        if cancel.wait(settings.retry_delay_s * 2**number):
            return
    raise BackendError(
        f"cannot get a reply from {server} after {settings.retries + 1} attempts ({_reason(last)}); is the server running?"
    )


def _reason(error: Exception | None) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, http.client.IncompleteRead):
        return "connection closed mid-response"
    return str(error) or type(error).__name__


def _connect(url: str, settings: HttpSettings) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"backend.url {url!r} is not an http(s) URL")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = cls(parts.hostname, parts.port, timeout=settings.connect_timeout_s)
    connection.connect()
    connection.sock.settimeout(settings.read_timeout_s)  # from now on: time allowed between bytes
    return connection


def _post(url: str, body: dict[str, Any], settings: HttpSettings,
          accept: str) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    connection = _connect(url, settings)
    try:
        headers = {**_headers(settings, accept), "Content-Type": "application/json"}
        connection.request("POST", _path(url), body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise HttpStatusError(response.status, response.read(1000).decode(errors="replace"))
        return response, connection
    except BaseException:
        connection.close()
        raise


def _headers(settings: HttpSettings, accept: str) -> dict[str, str]:
    headers = {"Accept": accept, "User-Agent": "voicechat"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


def _path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
