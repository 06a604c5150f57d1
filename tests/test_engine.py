"""The conversation engine on the tiny random-weight models: whole turns, events, timings,
interruption, failures and history."""

from __future__ import annotations

import dataclasses
import threading
from typing import Iterator

import numpy as np
import pytest

from tests.support.tiny_models import tiny_config, tiny_models_dir  # noqa: F401 (fixtures)
from voicechat.assemble import load_components
from voicechat.config import Config
from voicechat.engine import Components, Engine, TurnInput
from voicechat.errors import BackendError
from voicechat.events import (
    AudioChunk, Event, PromptReady, SpeechTokenized, SpeechTokens, StageFailed, TextDelta, TurnFinished,
    TurnStarted,
)

SAMPLES_PER_TOKEN = 1764  # 22050 Hz / 12.5 tokens per second


@pytest.fixture(scope="module")
def config(tiny_config: Config) -> Config:  # noqa: F811
    return dataclasses.replace(tiny_config, retrieval=dataclasses.replace(tiny_config.retrieval, rag="off"))


@pytest.fixture(scope="module")
def parts(config: Config) -> Iterator[Components]:
    loaded = load_components(config)
    yield loaded
    loaded.close()


def question_audio(seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def run(config: Config, parts: Components, question: TurnInput, **engine_args) -> tuple[list[Event], object]:
    events: list[Event] = []
    engine = Engine(config, parts, events.append, **engine_args)
    return events, engine.run_turn(question)


def kinds(events: list[Event]) -> list[str]:
    names = []
    for event in events:
        name = type(event).__name__
        if not names or names[-1] != name:
            names.append(name)
    return names


def test_spoken_turn_streams_text_and_audio_in_order(config: Config, parts: Components) -> None:
    events, result = run(config, parts, TurnInput(audio=question_audio(1.5), speech_end_t=None))
    assert isinstance(events[0], TurnStarted) and isinstance(events[-1], TurnFinished)
    order = [type(e) for e in events]
    assert order.index(SpeechTokenized) < order.index(PromptReady)
    first_output = min(i for i, kind in enumerate(order) if kind in (TextDelta, SpeechTokens))
    assert order.index(PromptReady) < first_output
    assert not any(isinstance(e, StageFailed) for e in events)
    tokenized = next(e for e in events if isinstance(e, SpeechTokenized))
    assert tokenized.count == 19  # 1.5 s at 12.5 tokens/s, rounded up
    speech_tokens = sum(e.count for e in events if isinstance(e, SpeechTokens))
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert speech_tokens > 0
    assert abs(audio.size - speech_tokens * SAMPLES_PER_TOKEN) < 256  # within one mel frame
    assert np.array_equal(result.reply_audio, audio)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert result.finished.reply_text == text
    assert not result.finished.interrupted


def test_timings_are_consistent_with_the_events(config: Config, parts: Components) -> None:
    events, result = run(config, parts, TurnInput(text="How long should green tea steep?"))
    timings = result.finished.timings
    assert timings.prompt_tokens == next(e.tokens for e in events if isinstance(e, PromptReady))
    assert timings.tokenize_ms is None  # a typed question has no speech to tokenise
    assert 0 <= timings.first_token_ms <= timings.total_ms
    assert timings.first_token_ms <= min(t for t in (timings.first_text_ms, timings.first_speech_token_ms) if t is not None)
    assert timings.first_speech_token_ms <= timings.first_audio_ms <= timings.total_ms


def test_endpoint_delay_is_measured_from_the_end_of_speech(config: Config, parts: Components) -> None:
    import time

    ended = time.monotonic() - 0.4
    _, result = run(config, parts, TurnInput(audio=question_audio(1.0), speech_end_t=ended))
    assert result.finished.timings.endpoint_delay_ms >= 400


def test_interrupt_mid_reply_stops_and_keeps_only_what_was_heard(config: Config, parts: Components) -> None:
    class HalfSecondHeard:
        """Test double for the player: the user heard half a second before interrupting."""

        underruns = 0
        played_s = 0.5

        def begin(self) -> None: ...
        def push(self, audio: np.ndarray) -> bool: return True
        def end(self) -> None: ...
        def flush(self) -> None: ...

    events: list[Event] = []
    engine = Engine(config, parts, events.append, speaker=HalfSecondHeard())

    def interrupt_at_first_audio(event: Event) -> None:
        events.append(event)
        if isinstance(event, AudioChunk):
            threading.Thread(target=engine.interrupt).start()

    engine.emit_to_driver = interrupt_at_first_audio
    result = engine.run_turn(TurnInput(text="Tell me a long story."))
    assert result.finished.interrupted
    special = parts.text_tokenizer.special
    (_, reply), = engine.history.turns
    assert sum(special.is_audio(t) for t in reply) == int(0.5 * 12.5)
    generated = sum(e.count for e in events if isinstance(e, SpeechTokens))
    assert generated < config.generation.max_new_tokens


def test_failing_language_model_is_reported_and_the_next_turn_works(config: Config, parts: Components) -> None:
    class FailsAfterFiveTokens:
        """Test double around the real backend: the server goes away mid-stream."""

        def stream(self, prompt_ids, params, cancel):
            for i, token in enumerate(parts.backend.stream(prompt_ids, params, cancel)):
                if i == 5:
                    raise BackendError("the model server closed the stream after 5 tokens")
                yield token

        def close(self) -> None: ...

    broken = dataclasses.replace(parts, backend=FailsAfterFiveTokens())
    events: list[Event] = []
    engine = Engine(config, broken, events.append)
    failed = engine.run_turn(TurnInput(text="first"))
    assert [e.message for e in events if isinstance(e, StageFailed)] == [
        "the model server closed the stream after 5 tokens"]
    assert failed.finished.reply_text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert engine.history.turns == []  # a broken reply does not become context
    engine.parts = parts
    ok = engine.run_turn(TurnInput(text="second"))
    assert ok.finished.reply_text and len(engine.history.turns) == 1


def test_history_grows_and_old_turns_are_dropped_to_fit_the_budget(config: Config, parts: Components) -> None:
    engine = Engine(config, parts, lambda e: None)
    engine.run_turn(TurnInput(text="first question"))
    engine.run_turn(TurnInput(text="second question"))
    assert len(engine.history.turns) == 2
    sizes: list[int] = []
    engine.emit_to_driver = lambda e: sizes.append(e.tokens) if isinstance(e, PromptReady) else None
    engine.run_turn(TurnInput(text="third question"))
    full = sizes[-1]
    tight = dataclasses.replace(config, generation=dataclasses.replace(config.generation, context_budget=full - 1))
    engine.config = tight
    engine.run_turn(TurnInput(text="fourth question"))
    assert sizes[-1] <= full - 1
