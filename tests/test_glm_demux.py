"""Splitting the reply stream into text for the screen and speech tokens for the decoder."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Iterator

import pytest

from voicechat.errors import BackendError
from voicechat.glm.demux import ReplyEnded, ReplyFailed, ReplySpeech, ReplyText, demux
from voicechat.glm.text_tokenizer import GlmTextTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_lm: Path) -> GlmTextTokenizer:
    return GlmTextTokenizer.from_pretrained(tiny_lm)


def ticking_clock() -> callable:
    counter = itertools.count()
    return lambda: float(next(counter))


def test_interleaved_reply_becomes_text_speech_and_end(tokenizer: GlmTextTokenizer) -> None:
    special = tokenizer.special
    text_ids = tokenizer.encode("图书馆 opens")
    reply = text_ids[:2] + [special.audio_offset + 4, special.audio_offset + 16383] + text_ids[2:]
    events = list(demux(reply + [special.user], tokenizer, special.stop_ids, 100, clock=ticking_clock()))
    assert "".join(e.text for e in events if isinstance(e, ReplyText)) == "图书馆 opens"
    assert [t for e in events if isinstance(e, ReplySpeech) for t in e.tokens] == [4, 16383]
    end = events[-1]
    assert isinstance(end, ReplyEnded) and end.reason == "stop"
    assert end.reply_ids == tuple(reply)  # history keeps the reply without <|user|>
    timings = end.timings
    assert timings.started == 0.0
    assert timings.first_token == 1.0
    assert timings.first_speech == 3.0
    assert timings.first_text is not None and timings.first_token <= timings.first_text
    assert timings.speech_tokens == 2 and timings.text_tokens == len(text_ids)
    assert timings.finished == float(len(reply) + 1)


def test_reply_reaching_the_token_limit_ends_with_reason_length(tokenizer: GlmTextTokenizer) -> None:
    ids = tokenizer.encode("abc")
    end = list(demux(ids, tokenizer, tokenizer.special.stop_ids, len(ids)))[-1]
    assert isinstance(end, ReplyEnded) and end.reason == "length"


def test_cancelled_reply_ends_with_reason_cancelled(tokenizer: GlmTextTokenizer) -> None:
    cancel = threading.Event()
    cancel.set()
    end = list(demux([], tokenizer, tokenizer.special.stop_ids, 10, cancel=cancel))[-1]
    assert isinstance(end, ReplyEnded) and end.reason == "cancelled"


def test_backend_failure_becomes_a_failed_event_with_the_partial_reply(tokenizer: GlmTextTokenizer) -> None:
    def tokens() -> Iterator[int]:
        yield tokenizer.special.audio_offset
        raise BackendError("stream cut")

    events = list(demux(tokens(), tokenizer, tokenizer.special.stop_ids, 10))
    assert isinstance(events[-1], ReplyFailed)
    assert events[-1].reply_ids == (tokenizer.special.audio_offset,)
    assert "cut" in str(events[-1].error)


def test_special_markers_in_the_reply_are_not_shown(tokenizer: GlmTextTokenizer) -> None:
    special = tokenizer.special
    ids = [special.begin_of_audio] + tokenizer.encode("hi") + [special.end_of_audio]
    events = list(demux(ids + [special.user], tokenizer, special.stop_ids, 10))
    assert "".join(e.text for e in events if isinstance(e, ReplyText)) == "hi"
