"""Barge-in on open speakers in a live conversation: the tiny random-weight models answer, the reply
plays on the PulseAudio virtual speaker, which loops back into the virtual microphone as a
loudspeaker's echo would (tests/support/pulse.py EchoPath), and WebRTC AEC3 takes it out again."""

from __future__ import annotations

import dataclasses
import os
import queue
import time

import numpy as np
import pytest

from tests.support.pulse import EchoPath
from tests.support.speech import RATE, speak
from voicechat.config import Config
from voicechat.events import Event, MicLevel, Notice, StageFailed, StateChanged, TurnFinished, TurnStarted
from voicechat.live import LiveConversation

# With the double-talk detector the echo no longer cuts the reply on the virtual loopback, and a
# voice over it does (scripts/bench_aec.py --barge-in); this whole conversation passed 15 of 16
# runs on a loaded 2-core machine, the one failure early in a run and not reproduced. It needs a
# quiet machine to be a verdict, so it runs when asked for.
pytestmark = [pytest.mark.slow, pytest.mark.audio,
              pytest.mark.skipif(os.environ.get("VOICECHAT_ECHO_SOAK") != "1",
                                 reason="a live conversation on open speakers, timing-sensitive on a loaded "
                                        "machine; VOICECHAT_ECHO_SOAK=1 runs it")]

HEARD_ALONE_S = 6.0  # the reply plays this long with only its echo in the microphone


def wait_for(events: queue.Queue, wanted, seen: list[Event], timeout: float = 120) -> Event:
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, StageFailed) and event.stage in ("microphone", "speaker", "loading", "turn"):
            pytest.fail(f"{event.stage}: {event.message}")
        seen.append(event)
        if wanted(event):
            return event


def drain(events: queue.Queue, seen: list[Event]) -> None:
    while True:
        try:
            seen.append(events.get_nowait())
        except queue.Empty:
            return


@pytest.fixture
def open_speakers(tiny_config: Config, tmp_path, pulse):
    """A live conversation with echo cancellation and barge-in on (the defaults), long replies, the
    silence endpointer, and the virtual speaker heard by the virtual microphone."""
    config = dataclasses.replace(
        tiny_config,
        audio=dataclasses.replace(tiny_config.audio, turn="silence", echo_cancellation=True, barge_in=None),
        generation=dataclasses.replace(tiny_config.generation, max_new_tokens=2000),
        retrieval=dataclasses.replace(tiny_config.retrieval, rag="off"),
        sessions=dataclasses.replace(tiny_config.sessions, dir=str(tmp_path / "sessions")),
    )
    room = EchoPath(pulse)
    events: queue.Queue = queue.Queue()
    live = LiveConversation(config, save=False, use_audio=True)
    live.start(events.put)
    seen: list[Event] = []
    try:
        wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "listening", seen)
        wait_for(events, lambda e: isinstance(e, MicLevel), seen)  # the microphone is open
        yield live, events, seen, pulse
    finally:
        live.close()
        room.stop()


def test_the_reply_is_not_cut_by_its_own_echo_and_a_voice_over_it_is_the_next_question(open_speakers) -> None:
    live, events, seen, pulse = open_speakers
    assert not [e for e in seen if isinstance(e, Notice) and "echo" in e.text]  # AEC3 and Silero loaded
    assert live.listener.echo is not None and live.listener.judge is not None and live.session.barge_in

    live.ask_text("Tell me a long story.")
    wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "speaking", seen)
    deadline = time.monotonic() + 120  # a bound on the wait, not a measure
    while live.player.played_s < HEARD_ALONE_S and live.player.playing and time.monotonic() < deadline:
        live.player.wait(timeout=0.2)
    drain(events, seen)
    assert live.player.played_s >= HEARD_ALONE_S, "the reply stopped before it had played long"
    assert live.listener.echo.converged  # barge-in was armed: the echo could have cut the reply
    assert live.session.state == "speaking"
    assert not [e for e in seen if isinstance(e, StateChanged) and e.new in ("interrupted", "hearing")]

    question = 0.5 * speak("Wait, what about oolong tea?", "en-gb+f3", 170)  # about as loud as the echo
    pulse.play(np.concatenate([question, np.zeros(RATE, np.float32)]), RATE)
    cut = wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "interrupted", seen)
    assert cut.why == "by speech"
    asked = wait_for(events, lambda e: isinstance(e, TurnStarted) and e.turn == 2, seen)
    assert asked.audio.size >= 0.8 * question.size  # the question whole, from before the interruption
    wait_for(events, lambda e: isinstance(e, TurnFinished) and e.turn == 2, seen)
    live.interrupt()  # the second reply need not play to its end
    wait_for(events, lambda e: isinstance(e, StateChanged) and e.new == "listening", seen)
    (first, second) = live.session.transcript
    assert first[2] is True  # the first reply was interrupted
    assert second[0] == f"(spoken, {asked.audio.size / RATE:.1f} s)"
