"""The engine's events (voicechat.events) as JSON and back, for the remote engine's wire.

One event is a JSON object ``{"kind": "TextDelta", "t": ..., "text": ...}``; its field types come
from the dataclass itself, so a new event or field needs no code here. Arrays travel beside the
JSON: an ``AudioChunk``'s samples as little-endian float32 bytes (the payload of its binary frame),
so the client plays exactly what the decoder made; a ``TurnStarted``'s utterance is not sent back
(the client has it).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

import numpy as np

from voicechat import events as event_types
from voicechat.errors import VoicechatError

SAMPLE_TYPE = np.dtype("<f4")


class CodecError(VoicechatError):
    """A message that does not describe an event."""


@functools.cache
def event_classes() -> dict[str, type[event_types.Event]]:
    return {cls.__name__: cls for cls in vars(event_types).values()
            if isinstance(cls, type) and issubclass(cls, event_types.Event) and cls is not event_types.Event}


def encode(event: event_types.Event) -> tuple[dict[str, Any], bytes | None]:
    """The event as a JSON-ready object, and its audio as bytes (None when it has none)."""
    data: dict[str, Any] = {"kind": type(event).__name__}
    payload = None
    for spec in dataclasses.fields(event):
        value = getattr(event, spec.name)
        if isinstance(value, np.ndarray):
            if isinstance(event, event_types.AudioChunk):
                payload = np.ascontiguousarray(value, SAMPLE_TYPE).tobytes()
            data[spec.name] = None
        else:
            data[spec.name] = _plain(value)
    return data, payload


def decode(data: Any, payload: bytes | None = None) -> event_types.Event:
    """The event a JSON object describes; CodecError when it describes none."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise CodecError("an event needs its kind")
    cls = event_classes().get(data["kind"])
    if cls is None:
        raise CodecError(f"unknown event kind {data['kind']!r}")
    values = _fields(cls, data)
    if cls is event_types.AudioChunk:
        if payload is None or len(payload) % SAMPLE_TYPE.itemsize:
            raise CodecError("an audio chunk needs its samples as float32 bytes")
        values["samples"] = np.frombuffer(payload, SAMPLE_TYPE).copy()
    return cls(**values)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {spec.name: _plain(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(event_types))


def _fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise CodecError(f"{cls.__name__} needs {spec.name}")
            continue
        values[spec.name] = _typed(_hints(cls)[spec.name], data[spec.name], f"{cls.__name__}.{spec.name}")
    return values


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` from JSON as the type ``hint`` names; CodecError when it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [arm for arm in args if arm is not type(None)]
        return _typed(arms[0], value, where) if len(arms) == 1 else value
    if hint is np.ndarray:
        return None  # arrays travel beside the JSON
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object")
        return hint(**_fields(hint, value))
    if origin is tuple:
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected a list")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise CodecError(f"{where}: expected {len(items)} items")
        return tuple(_typed(item, v, where) for item, v in zip(items, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object")
        return {key: _typed(args[1], v, where) for key, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise CodecError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")
