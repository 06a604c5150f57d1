"""The conversation engine on the tiny random-weight models: whole turns, events, timings,
interruption, failures and history."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.support.tiny_models import ScriptedFirstReply
from voicechat.assemble import load_components
from voicechat.cancellation import Cancelled
from voicechat.config import Config
from voicechat.engine import CollectingSpeaker, Components, Engine, EngineConfig, Settings, TurnInput
from voicechat.errors import AudioError, BackendError
from voicechat.events import (
    AudioChunk,
    Event,
    PromptReady,
    Retrieved,
    RoundDiscarded,
    RoundStarted,
    SpeechTokenized,
    SpeechTokens,
    StageFailed,
    TextDelta,
    TurnFinished,
    TurnStarted,
)
from voicechat.glm.prompt import Conversation
from voicechat.hold import Hold

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_TOKEN = 1764  # 22050 Hz / 12.5 tokens per second


@pytest.fixture(scope="module")
def config(tiny_config: Config) -> Config:
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
    engine = Engine(EngineConfig.from_config(config), parts, events.append, **engine_args)
    return events, engine.run_turn(question, Settings.from_config(config), Conversation())


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


class DeviceClockSpeaker(CollectingSpeaker):
    """Test double for the player: its first sample reaches the device 50 ms after the push;
    ``stale`` keeps the first-audio time of a reply played before the turn."""

    def __init__(self, stale: bool = False) -> None:
        super().__init__()
        self.first_audio_at = time.monotonic() - 10 if stale else None

    def push(self, audio: np.ndarray) -> bool:
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic() + 0.05
        return super().push(audio)


def test_first_heard_is_when_the_device_plays_the_first_sample(config: Config, parts: Components) -> None:
    _, result = run(config, parts, TurnInput(text="Tell me a story."), speaker=DeviceClockSpeaker())
    timings = result.finished.timings
    assert timings.first_audio_ms < timings.first_heard_ms <= timings.first_audio_ms + 50
    _, result = run(config, parts, TurnInput(text="Tell me a story."), speaker=DeviceClockSpeaker(stale=True))
    assert result.finished.timings.first_heard_ms is None  # an earlier reply's time is not this one's
    _, result = run(config, parts, TurnInput(text="Tell me a story."))
    assert result.finished.timings.first_heard_ms is None  # no device


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
        first_audio_at = None

        def begin(self) -> None: ...
        def push(self, audio: np.ndarray) -> bool: return True
        def end(self) -> None: ...
        def flush(self) -> None: ...

    events: list[Event] = []
    engine = Engine(EngineConfig.from_config(config), parts, events.append, speaker=HalfSecondHeard())

    def interrupt_at_first_audio(event: Event) -> None:
        events.append(event)
        if isinstance(event, AudioChunk):
            threading.Thread(target=engine.interrupt).start()

    engine.emit_to_driver = interrupt_at_first_audio
    result = engine.run_turn(TurnInput(text="Tell me a long story."), Settings.from_config(config), Conversation())
    assert result.finished.interrupted
    special = parts.text_tokenizer.special
    assert sum(special.is_audio(t) for t in result.heard_ids) == int(0.5 * 12.5)
    generated = sum(e.count for e in events if isinstance(e, SpeechTokens))
    assert generated < config.generation.max_new_tokens


def test_ctrl_c_during_a_reply_leaves_no_model_thread_running(config: Config, parts: Components) -> None:
    def ctrl_c_at_first_speech(event: Event) -> None:
        if isinstance(event, SpeechTokens):  # emitted on the calling thread, as Ctrl-C would land
            raise KeyboardInterrupt

    long_replies = dataclasses.replace(config, generation=dataclasses.replace(config.generation, max_new_tokens=2000))
    engine = Engine(EngineConfig.from_config(long_replies), parts, ctrl_c_at_first_speech)
    try:
        engine.run_turn(TurnInput(text="Tell me a long story."), Settings.from_config(config), Conversation())
    except KeyboardInterrupt:
        # Checked while the interruption is handled and its traceback holds the turn's frames: the
        # workers were stopped before it left the turn, not when its leftovers are freed.
        running = [t.name for t in threading.enumerate() if t.name in ("lm-generate", "voicechat-decoder")]
    else:
        pytest.fail("the Ctrl-C did not end the turn")
    assert running == []
    _, result = run(config, parts, TurnInput(text="And now?"))  # the model is free again
    assert result.finished.reply_text and not result.finished.interrupted


def test_interrupt_while_a_long_question_is_understood_answers_nothing(config: Config, parts: Components) -> None:
    events: list[Event] = []
    engine = Engine(EngineConfig.from_config(config), parts, events.append)

    def interrupt_at_once(event: Event) -> None:
        events.append(event)
        if isinstance(event, TurnStarted):
            engine.interrupt()

    engine.emit_to_driver = interrupt_at_once
    result = engine.run_turn(TurnInput(audio=question_audio(95.0)), Settings.from_config(config), Conversation())
    assert result.finished.interrupted and result.prompt is None and result.heard_ids == []
    assert not any(isinstance(e, (SpeechTokenized, PromptReady, StageFailed)) for e in events)


def test_ctrl_c_while_a_question_is_understood_stops_the_tokenizer_before_leaving_the_turn(
        config: Config, parts: Components) -> None:
    class CtrlCInRetrieval:
        """Test double for the retriever: Ctrl-C lands on the turn's thread while it retrieves."""

        modes = frozenset({"e2e"})

        def retrieve(self, mode, **kwargs):
            raise KeyboardInterrupt

    class RecordingTokenizer:
        """Test double around the real speech tokenizer: remembers whether it was cancelled."""

        cancelled = False

        def tokenize(self, samples, rate, cancel=None):
            try:
                return parts.speech_tokenizer.tokenize(samples, rate, cancel)
            except Cancelled:
                self.cancelled = True
                raise

    tokenizer = RecordingTokenizer()
    both = dataclasses.replace(parts, retriever=CtrlCInRetrieval(), speech_tokenizer=tokenizer)
    engine = Engine(EngineConfig.from_config(config), both, lambda event: None)
    with pytest.raises(KeyboardInterrupt):
        engine.run_turn(TurnInput(audio=question_audio(95.0)), Settings("e2e", "off", config.voice), Conversation())
    assert tokenizer.cancelled  # by the time the Ctrl-C left the turn: it was waited for


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
    events, failed = run(config, broken, TurnInput(text="first"))
    assert [e.message for e in events if isinstance(e, StageFailed)] == [
        "the model server closed the stream after 5 tokens"]
    assert failed.finished.reply_text == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert failed.prompt is None and failed.heard_ids == []  # a broken reply does not become context
    _, ok = run(config, parts, TurnInput(text="second"))
    assert ok.finished.reply_text and ok.prompt is not None


# --- with retrieval over the sample knowledge folder --------------------------------------------


@pytest.fixture(scope="module")
def rag_config(tiny_rag_config: Config) -> Config:
    return tiny_rag_config


@pytest.fixture(scope="module")
def rag_parts(rag_config: Config) -> Iterator[Components]:
    config = dataclasses.replace(rag_config, retrieval=dataclasses.replace(rag_config.retrieval, two_round="fallback"))
    loaded = load_components(config)  # fallback: the asr encoder too
    yield loaded
    loaded.close()


def test_spoken_question_retrieves_sources_that_go_into_the_prompt(rag_config: Config, rag_parts: Components) -> None:
    events, result = run(rag_config, rag_parts, TurnInput(audio=question_audio(2.0)))
    (retrieved,) = [e for e in events if isinstance(e, Retrieved)]
    assert retrieved.mode == "e2e" and len(retrieved.sources) == rag_config.retrieval.top_k
    knowledge_files = {str(p.relative_to(REPO / "knowledge")) for p in (REPO / "knowledge").rglob("*") if p.is_file()}
    assert {s.file for s in retrieved.sources} <= knowledge_files
    assert result.sources == retrieved.sources
    timings = result.finished.timings
    assert 0 < timings.embed_ms + timings.search_ms <= timings.retrieve_ms
    no_rag = dataclasses.replace(rag_config, retrieval=dataclasses.replace(rag_config.retrieval, rag="off"))
    plain, _ = run(no_rag, rag_parts, TurnInput(audio=question_audio(2.0)))
    prompt = lambda evs: next(e.tokens for e in evs if isinstance(e, PromptReady))  # noqa: E731
    assert prompt(events) > prompt(plain) + 100  # the passages are in the prompt


def test_typed_question_is_retrieved_as_text(rag_config: Config, rag_parts: Components) -> None:
    events, _ = run(rag_config, rag_parts, TurnInput(text="How long should green tea steep?"))
    (retrieved,) = [e for e in events if isinstance(e, Retrieved)]
    assert retrieved.mode == "text" and retrieved.query == "How long should green tea steep?"


def test_rewrite_round_retrieves_what_the_model_says_it_needs(rag_config: Config, rag_parts: Components) -> None:
    need = "The steeping time of green tea."
    parts = dataclasses.replace(rag_parts, backend=ScriptedFirstReply(rag_parts, need))
    config = dataclasses.replace(rag_config, retrieval=dataclasses.replace(rag_config.retrieval, two_round="rewrite"))
    events, result = run(config, parts, TurnInput(audio=question_audio(2.0)))
    rounds = [(e.round, e.mode, e.query) for e in events if isinstance(e, Retrieved)]
    assert rounds == [(1, "e2e", None), (2, "rewrite", need)]
    assert result.finished.reply_text  # then the model answered


def test_fallback_drops_an_uninformed_reply_before_any_audio_and_retrieves_via_asr(
        rag_config: Config, rag_parts: Components) -> None:
    parts = dataclasses.replace(rag_parts, backend=ScriptedFirstReply(rag_parts, "insufficient information"))
    config = dataclasses.replace(rag_config, retrieval=dataclasses.replace(rag_config.retrieval, two_round="fallback"))
    events, result = run(config, parts, TurnInput(audio=question_audio(2.0)))
    rounds = [(e.round, e.mode) for e in events if isinstance(e, Retrieved)]
    assert rounds == [(1, "e2e"), (2, "asr")]
    second_prompt = [i for i, e in enumerate(events) if isinstance(e, PromptReady)][1]
    assert not any(isinstance(e, (AudioChunk, SpeechTokens)) for e in events[:second_prompt])
    assert "insufficient information" not in result.finished.reply_text
    marks = [(type(e).__name__, e.round) for e in events if isinstance(e, (RoundStarted, RoundDiscarded))]
    assert marks == [("RoundStarted", 1), ("RoundDiscarded", 1), ("RoundStarted", 2)]


# --- held turns: started in the user's pause -----------------------------------------------------


def start_held(config: Config, parts: Components, hold: Hold, speaker: CollectingSpeaker):
    """A held spoken turn running on its own thread, as the conversation's thread runs it."""
    events: list[Event] = []
    engine = Engine(EngineConfig.from_config(config), parts, events.append, speaker=speaker)
    outcome: dict[str, object] = {}
    question = TurnInput(audio=question_audio(1.0), speech_end_t=time.monotonic(), hold=hold)
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "result", engine.run_turn(question, Settings.from_config(config), Conversation())))
    thread.start()
    return engine, events, outcome, thread


def test_a_held_turn_shows_and_plays_nothing_until_released_then_all_of_it(config: Config, parts: Components) -> None:
    hold, speaker = Hold(), CollectingSpeaker()
    engine, events, outcome, thread = start_held(config, parts, hold, speaker)
    assert hold.audio_ready.wait(120)  # the first audio is decoded, and waits
    assert events == [] and speaker.pieces == []
    hold.release()
    thread.join(120)
    result = outcome["result"]
    assert isinstance(events[0], TurnStarted) and isinstance(events[-1], TurnFinished)
    assert kinds(events)[:3] == ["TurnStarted", "SpeechTokenized", "RoundStarted"]
    assert np.array_equal(speaker.audio(), result.reply_audio) and result.reply_audio.size > 0
    timings = result.finished.timings
    assert timings.preemptive_ms > 0
    assert timings.confirmed_to_audio_ms == 0  # the audio was ready before the confirmation
    assert timings.first_audio_ms == pytest.approx(timings.endpoint_delay_ms)
    assert not result.finished.interrupted and engine.turns == 1


def test_a_dropped_held_turn_leaves_no_event_no_audio_and_no_turn_number(config: Config, parts: Components) -> None:
    hold, speaker = Hold(), CollectingSpeaker()
    engine, events, outcome, thread = start_held(config, parts, hold, speaker)
    assert hold.audio_ready.wait(120)
    hold.drop()  # stops the turn that works for it
    thread.join(120)
    assert not thread.is_alive()
    assert events == [] and speaker.pieces == []
    assert outcome["result"].finished.interrupted and engine.turns == 0
    dropped_early = Hold()
    dropped_early.drop()  # before the turn started: it stops at once
    result = engine.run_turn(TurnInput(audio=question_audio(1.0), hold=dropped_early), Settings.from_config(config),
                             Conversation())
    assert events == [] and speaker.pieces == [] and result.prompt is None
    engine.run_turn(TurnInput(text="And now?"), Settings.from_config(config), Conversation())
    assert events[0].turn == 1  # the next real turn is the first


class UnpluggedSpeaker(CollectingSpeaker):
    """Test double for a player whose device went away: begin() fails as Player's does."""

    def begin(self) -> None:
        raise AudioError("the output device 'vc_speaker' stopped playing")


def test_a_device_error_met_at_the_release_is_the_turns_not_the_releasing_threads(config: Config,
                                                                                  parts: Components) -> None:
    hold = Hold()
    engine, events, outcome, thread = start_held(config, parts, hold, UnpluggedSpeaker())
    assert hold.audio_ready.wait(120)
    hold.release()  # on this thread, as the listener's thread releases a turn: it does not raise here
    thread.join(120)
    (failed,) = [e for e in events if isinstance(e, StageFailed)]
    assert failed.stage == "speech decoder" and "stopped playing" in failed.message
    assert isinstance(events[-1], TurnFinished)
