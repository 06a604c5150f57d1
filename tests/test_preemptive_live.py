"""The reply prepared in the user's pause, in a live conversation: Piper questions spoken into a
PulseAudio virtual microphone, the real Smart Turn model deciding the end of the turn, the tiny
random-weight models answering and the reply played on a virtual speaker."""

from __future__ import annotations

import dataclasses
import queue
from pathlib import Path

import numpy as np
import pytest

from tests.support.piper_speech import QUESTIONS, say, say_with_pause
from tests.support.speech import RATE
from voicechat.assemble import load_components
from voicechat.config import Config
from voicechat.events import Event, StageFailed, StateChanged, TurnConfirmed, TurnFinished, TurnStarted
from voicechat.live import LiveConversation
from voicechat.sessions import read_turns

pytestmark = [pytest.mark.slow, pytest.mark.audio]


class CountingTokenizer:
    """Test double around the real speech tokenizer: records how much audio each turn tokenised,
    the trace of every turn started, shown or not."""

    def __init__(self, real) -> None:
        self.real = real
        self.seconds: list[float] = []

    def tokenize(self, samples, rate, cancel=None):
        self.seconds.append(samples.size / rate)
        return self.real.tokenize(samples, rate, cancel)


@pytest.fixture
def conversation(tiny_config: Config, smart_turn_path: Path, tmp_path: Path, pulse):
    """A live conversation with preemptive work on, the relaxed preset (the model is first asked
    after 600 ms of silence, so a half-second pause is bridged) and the session log on."""
    audio = tiny_config.audio
    config = dataclasses.replace(
        tiny_config,
        audio=dataclasses.replace(audio, turn="smart", preemptive=True,
                                  vad=dataclasses.replace(audio.vad, preset="relaxed")),
        models=dataclasses.replace(tiny_config.models,
                                   turn=dataclasses.replace(tiny_config.models.turn, source=str(smart_turn_path))),
        retrieval=dataclasses.replace(tiny_config.retrieval, rag="off"),
        sessions=dataclasses.replace(tiny_config.sessions, dir=str(tmp_path / "sessions")),
    )
    tokenizers: list[CountingTokenizer] = []

    def load(cfg, progress=None, on_warning=None):
        parts = load_components(cfg, progress, on_warning)
        tokenizers.append(CountingTokenizer(parts.speech_tokenizer))
        return dataclasses.replace(parts, speech_tokenizer=tokenizers[0])

    events: queue.Queue = queue.Queue()
    live = LiveConversation(config, save=True, load=load, use_audio=True)
    live.start(events.put)
    wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "listening")
    yield live, events, tokenizers[0], pulse
    live.close()


def wait_for(events: queue.Queue, wanted, seen: list[Event] | None = None, timeout: float = 120) -> Event:
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, StageFailed) and event.stage in ("microphone", "speaker", "loading"):
            pytest.fail(f"{event.stage}: {event.message}")
        if seen is not None:
            seen.append(event)
        if wanted(event):
            return event


def speak_into_the_microphone(pulse, *parts: np.ndarray | float) -> None:
    audio = [np.zeros(int(part * RATE), np.float32) if isinstance(part, float) else part for part in parts]
    pulse.play(np.concatenate(audio), RATE).wait(timeout=60)


def a_turn(events: queue.Queue) -> list[Event]:
    """Everything the conversation said until its reply was over and it listens again."""
    seen: list[Event] = []
    wait_for(events, lambda e: isinstance(e, TurnFinished), seen)
    wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "listening", seen)
    return seen


def test_a_question_followed_by_a_long_pause_plays_the_reply_prepared_in_the_pause(conversation) -> None:
    live, events, tokenizer, pulse = conversation
    first, second = QUESTIONS[33]
    recording = pulse.record()
    speak_into_the_microphone(pulse, 0.5, say(f"{first} {second}"), 2.5)
    seen = a_turn(events)
    moves = [(e.old, e.new) for e in seen if isinstance(e, StateChanged)]
    assert ("hearing", "pausing") in moves and ("pausing", "thinking") in moves
    (finished,) = [e for e in seen if isinstance(e, TurnFinished)]
    assert [e for e in seen if isinstance(e, TurnConfirmed)]  # the turn started in the pause was released
    timings = finished.timings
    assert timings.preemptive_ms > 0 and timings.confirmed_to_audio_ms is not None
    assert timings.first_heard_ms is not None  # it was played on the speaker
    assert recording.wait_for_sound(0.2, 48000, timeout=30)
    recording.stop()
    (started,) = [e for e in seen if isinstance(e, TurnStarted)]
    assert tokenizer.seconds.count(started.audio.size / RATE) == 1  # the pause's work was used, not redone
    (turn,) = read_turns(live.session.log.path)
    assert turn["timings"]["preemptive_ms"] == pytest.approx(timings.preemptive_ms)


def test_a_pause_then_more_speech_gives_one_reply_to_the_whole_question_and_no_trace_of_the_dropped_one(
        conversation) -> None:
    live, events, tokenizer, pulse = conversation
    before, after = say_with_pause(*QUESTIONS[5])
    speak_into_the_microphone(pulse, 0.5, before, 0.5, after, 2.5)
    seen = a_turn(events)
    moves = [(e.old, e.new, e.why) for e in seen if isinstance(e, StateChanged)]
    assert ("pausing", "hearing", "speech again") in moves  # the pause inside the question
    started = [e for e in seen if isinstance(e, TurnStarted)]
    finished = [e for e in seen if isinstance(e, TurnFinished)]
    assert len(started) == 1 and len(finished) == 1 and finished[0].turn == 1
    whole = started[0].audio.size / RATE
    assert whole >= (before.size + after.size) / RATE  # the reply answers all of it
    assert min(tokenizer.seconds) < whole - after.size / RATE  # work on the first part began ...
    assert max(tokenizer.seconds) == pytest.approx(whole)  # ... and only the whole question was answered
    (turn,) = read_turns(live.session.log.path)
    assert turn["turn"] == 1 and turn["reply_text"] == finished[0].reply_text
    assert len(live.session.transcript) == 1 and len(live.session.history.turns) == 1
    assert live.session.transcript[0][0] == f"(spoken, {whole:.1f} s)"
