"""The remote engine's wire: one WebSocket per conversation, JSON text messages and binary frames.

A binary frame is ``[4-byte big-endian header length][JSON header][payload]``: one message with its
audio, so nothing can come between a header and its bytes.

Client → server::

    {"type": "hello", "protocol": 1, "client": "voicechat 0.1.0"}        first, once
    binary {"type": "turn", "id": 1, "settings": {...}, "samples": N, "rate": 16000, "format": "s16le",
            "history": {...}?} + N int16 samples                            a spoken question
    {"type": "turn", "id": 2, "text": "...", "settings": {...}, "history": {...}?}   a typed one
    {"type": "interrupt", "played_s": 1.2}        cut the reply; played_s: what the user heard (null: all)
    {"type": "settings", "rag": "e2e", "two_round": "off", "voice": "default"}

Server → client::

    {"type": "welcome", "protocol": 1, "server": ..., "models": {...}, "modes": [...], "voices": [...],
     "sample_rate": 22050, "settings": {...}, "limits": {...}}
    {"type": "event", "event": {"kind": ..., ...}}                        the engine's events
    binary {"type": "event", "event": {"kind": "AudioChunk", ...}} + float32 samples
    {"type": "turn_done", "id": 1, "remembered": {...} | null}            the turn is over
    {"type": "error", "code": ..., "message": ..., "turn": id?}           one line for the user

``history`` (optional) replaces what the server remembers of the conversation: the client sends
it after a reconnection. ``remembered`` is what the turn added to the history, so the client keeps
a copy to send then. Time stamps in events are the server's monotonic clock.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from voicechat.errors import VoicechatError

PROTOCOL_VERSION = 1
PATH = "/v1/conversation"
HEALTH_PATH = "/v1/health"
PCM_FORMAT = "s16le"  # the utterance: 16 kHz mono int16, little-endian
HEADER_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 1024 * 1024

# Close codes (4000-4999 are the application's): the client tells the user why.
CLOSE_VERSION = 4001
CLOSE_PROTOCOL = 4002


class ProtocolError(VoicechatError):
    """A message that does not follow the protocol."""


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A binary frame: the header's length, the header as JSON, the payload."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return HEADER_LENGTH.pack(len(encoded)) + encoded + payload


def unpack(frame: bytes) -> tuple[dict[str, Any], bytes]:
    if len(frame) < HEADER_LENGTH.size:
        raise ProtocolError("a binary frame shorter than its header length")
    (length,) = HEADER_LENGTH.unpack_from(frame)
    if length > min(MAX_HEADER_BYTES, len(frame) - HEADER_LENGTH.size):
        raise ProtocolError("a binary frame whose header length is longer than the frame")
    header = parse(frame[HEADER_LENGTH.size:HEADER_LENGTH.size + length])
    return header, frame[HEADER_LENGTH.size + length:]


def parse(text: str | bytes) -> dict[str, Any]:
    """A JSON message with its type; ProtocolError otherwise."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("a message that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message without its type")
    return message


def dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
