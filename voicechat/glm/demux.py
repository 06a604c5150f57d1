"""Split the model's token stream into text for the screen and speech tokens for the decoder.

Ids from <|audio_0|> on are speech (id - offset); the others are text, shown through the
streaming detokenizer; the stop token (<|user|>) ends the reply. Each event carries a monotonic
timestamp ``t`` (as the engine's events); the end event carries the timings of the first token, first text and first speech.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Union

from voicechat.errors import VoicechatError
from voicechat.glm.text_tokenizer import GlmTextTokenizer, StreamingDetokenizer


@dataclass(frozen=True)
class ReplyText:
    text: str
    t: float  # the clock (time.monotonic) when it happened


@dataclass(frozen=True)
class ReplySpeech:
    tokens: tuple[int, ...]  # speech-tokenizer codes, 0..16383
    t: float  # the clock (time.monotonic) when it happened


@dataclass(frozen=True)
class StreamTimings:
    started: float
    first_token: float | None = None
    first_text: float | None = None
    first_speech: float | None = None
    finished: float | None = None
    text_tokens: int = 0
    speech_tokens: int = 0


@dataclass(frozen=True)
class ReplyEnded:
    reason: Literal["stop", "length", "cancelled"]
    reply_ids: tuple[int, ...]  # for the conversation history; without the stop token
    timings: StreamTimings
    t: float  # the clock (time.monotonic) when it happened


@dataclass(frozen=True)
class ReplyFailed:
    error: VoicechatError
    reply_ids: tuple[int, ...]
    timings: StreamTimings
    t: float  # the clock (time.monotonic) when it happened


ReplyEvent = Union[ReplyText, ReplySpeech, ReplyEnded, ReplyFailed]


def demux(tokens: Iterable[int], tokenizer: GlmTextTokenizer, stop_ids: tuple[int, ...],
          max_new_tokens: int, cancel: threading.Event | None = None,
          clock: Callable[[], float] = time.monotonic, started: float | None = None) -> Iterator[ReplyEvent]:
    """Events for one reply; the last one is ReplyEnded or ReplyFailed."""
    special = tokenizer.special
    detokenizer = StreamingDetokenizer(tokenizer)
    started = clock() if started is None else started
    reply: list[int] = []
    first: dict[str, float] = {}
    counts = {"text": 0, "speech": 0}

    def final_timings(now: float) -> StreamTimings:
        return StreamTimings(started, first.get("token"), first.get("text"), first.get("speech"),
                             now, counts["text"], counts["speech"])

    try:
        for token in tokens:
            now = clock()
            first.setdefault("token", now)
            if token in stop_ids:
                if tail := detokenizer.flush():
                    yield ReplyText(tail, now)
                yield ReplyEnded("stop", tuple(reply), final_timings(now), now)
                return
            reply.append(token)
            if special.is_audio(token):
                first.setdefault("speech", now)
                counts["speech"] += 1
                yield ReplySpeech((token - special.audio_offset,), now)
            elif not tokenizer.is_special(token):
                counts["text"] += 1
                if text := detokenizer.push(token):
                    first.setdefault("text", now)
                    yield ReplyText(text, now)
    except VoicechatError as error:
        now = clock()
        yield ReplyFailed(error, tuple(reply), final_timings(now), now)
        return
    now = clock()
    if tail := detokenizer.flush():
        yield ReplyText(tail, now)
    if cancel is not None and cancel.is_set():
        reason: Literal["stop", "length", "cancelled"] = "cancelled"
    else:
        reason = "length" if len(reply) >= max_new_tokens else "stop"
    yield ReplyEnded(reason, tuple(reply), final_timings(now), now)
