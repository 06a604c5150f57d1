"""The engine's events survive the wire: every field, nested sources and timings, audio bytes."""

from __future__ import annotations

import numpy as np
import pytest

from voicechat.events import (
    AudioChunk, Retrieved, Source, StageFailed, TextDelta, TurnFinished, TurnStarted, TurnTimings,
)
from voicechat.remote import codec, protocol


def roundtrip(event):
    data, payload = codec.encode(event)
    frame = protocol.pack({"type": "event", "event": data}, payload or b"")
    header, body = protocol.unpack(frame)
    return codec.decode(protocol.parse(protocol.dump(header))["event"], body or None)


def test_events_with_nested_dataclasses_come_back_equal() -> None:
    source = Source(rank=1, score=0.5, file="tea.md", heading="Green", lines=(3, 9), text="Steep 2 min.", injected=True)
    retrieved = Retrieved(started=1.0, mode="e2e", round=1, sources=(source,), query=None, stage_ms={"embed": 3.5})
    finished = TurnFinished(turn=2, reply_text="Hi", interrupted=False,
                            timings=TurnTimings(first_audio_ms=12.5, prompt_tokens=40, underruns=1, network_ms=0.7))
    for event in (retrieved, finished, TextDelta(text="héllo"), StageFailed(stage="retrieval", message="x")):
        assert roundtrip(event) == event


def test_audio_travels_as_exact_float32_and_the_question_audio_is_not_sent_back() -> None:
    samples = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    chunk = roundtrip(AudioChunk(samples=samples, rate=22050))
    assert chunk.rate == 22050 and np.array_equal(chunk.samples, samples)
    started = roundtrip(TurnStarted(turn=1, question=None, audio=samples, speech_end_t=None, mode="e2e", voice="default"))
    assert started.audio is None and started.mode == "e2e"


@pytest.mark.parametrize("data, payload, message", [
    ({"kind": "Nope"}, None, "unknown event kind"),
    ({"text": "x"}, None, "needs its kind"),
    ({"kind": "TextDelta"}, None, "TextDelta needs text"),
    ({"kind": "TextDelta", "text": 5}, None, "expected str"),
    ({"kind": "AudioChunk", "samples": None, "rate": 22050}, b"\x00\x00\x00", "float32 bytes"),
    ({"kind": "Retrieved", "started": 1, "mode": "e2e", "round": 1, "sources": [{"rank": 1}]}, None, "needs score"),
])
def test_a_message_that_describes_no_event_is_a_codec_error(data, payload, message) -> None:
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(data, payload)


def test_frames_that_lie_about_their_header_are_protocol_errors() -> None:
    for frame in (b"\x00", b"\x00\x00\x10\x00{}", protocol.HEADER_LENGTH.pack(2) + b"[]"):
        with pytest.raises(protocol.ProtocolError):
            protocol.unpack(frame)
