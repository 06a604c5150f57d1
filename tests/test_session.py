"""The conversation session owns the turn-taking state: every move, from every starting state, for
keys, speech, the endpointer, the reply and interruptions, on the tiny random-weight models."""

from __future__ import annotations

import dataclasses
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from voicechat.assemble import add_retrieval_modes, load_components
from voicechat.audio.events import Interrupted, Paused, Resumed, SpeechStarted, UtteranceDiscarded, UtteranceEnded
from voicechat.config import Config
from voicechat.audio.resample import as_float32
from voicechat.engine import Components, TurnInput
from voicechat.events import (
    AudioChunk, Event, MicLevel, Notice, SettingsChanged, StateChanged, TextDelta, TurnConfirmed, TurnFinished,
    TurnStarted,
)
from voicechat.session import TRANSITIONS, ConversationSession, IllegalTransition
from voicechat.sessions import read_turns

REPO = Path(__file__).resolve().parents[1]
SPOKEN = np.full(8000, 1000, np.int16)


@pytest.fixture(scope="module")
def config(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    sessions = tmp_path_factory.mktemp("sessions")
    return dataclasses.replace(tiny_config, retrieval=dataclasses.replace(tiny_config.retrieval, rag="off"),
                               sessions=dataclasses.replace(tiny_config.sessions, dir=str(sessions)))


@pytest.fixture(scope="module")
def parts(config: Config) -> Iterator[Components]:
    loaded = load_components(config)
    yield loaded
    loaded.close()


class Recorder:
    """Collects the session's events."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def notices(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Notice)]

    def moves(self) -> list[tuple[str, str]]:
        return [(e.old, e.new) for e in self.events if isinstance(e, StateChanged)]


def session_in(state: str, config: Config, parts: Components, barge_in: bool = False) -> tuple[ConversationSession, Recorder]:
    """A session brought into ``state`` by legal moves only."""
    if barge_in:
        config = dataclasses.replace(config, audio=dataclasses.replace(config.audio, barge_in=True))
    recorder = Recorder()
    session = ConversationSession(config, recorder, save=False)
    if state == "loading":
        return session, recorder
    if state == "error":
        session.failed("missing models: speech decoder")
        return session, recorder
    session.ready(parts)
    steps: dict[str, list[Callable[[ConversationSession], None]]] = {
        "listening": [],
        "muted": [MUTE],
        "hearing": [SPEECH],
        "pausing": [SPEECH, PAUSE],
        "thinking": [TYPED, TAKEN],
        "speaking": [TYPED, TAKEN, FIRST_AUDIO],
        "interrupted": [TYPED, TAKEN, FIRST_AUDIO, KEY_INTERRUPT],
    }
    for step in steps[state]:
        step(session)
    assert session.state == state
    recorder.events.clear()
    return session, recorder


def SPEECH(s: ConversationSession) -> None:
    s.on_audio(SpeechStarted(t=1.0, start=0.9))


def END(s: ConversationSession) -> None:
    s.on_audio(UtteranceEnded(t=2.0, start=0.9, end=1.8, audio=SPOKEN, audio_start=0.6))


def PAUSE(s: ConversationSession) -> None:
    s.on_audio(Paused(t=1.9, start=0.9, end=1.8, audio=SPOKEN, audio_start=0.6))


def RESUME(s: ConversationSession) -> None:
    s.on_audio(Resumed(t=2.0))


def DISCARD(s: ConversationSession) -> None:
    s.on_audio(UtteranceDiscarded(t=1.2, start=0.9, end=1.0))


def TYPED(s: ConversationSession) -> None:
    s.ask(TurnInput(text="How hot for green tea?"))


def TAKEN(s: ConversationSession) -> None:
    s.next_question()  # the conversation's thread starts answering it


def FIRST_AUDIO(s: ConversationSession) -> None:
    s._from_engine(AudioChunk(samples=np.zeros(10, np.float32), rate=22050))


def KEY_INTERRUPT(s: ConversationSession) -> None:
    s.on_audio(Interrupted(t=3.0, played_s=0.4, by="key"))


def REPLY_OVER(s: ConversationSession) -> None:
    s.turn_over()


def MUTE(s: ConversationSession) -> None:
    s.set_muted(True)


def UNMUTE(s: ConversationSession) -> None:
    s.set_muted(False)


def PTT_NOTHING(s: ConversationSession) -> None:
    if s.press_to_talk():
        s.release_to_talk(np.zeros(4000, np.int16))


def PTT_SPEECH(s: ConversationSession) -> None:
    if s.press_to_talk():
        SPEECH(s)
        END(s)  # an utterance inside push-to-talk is kept in the recording, not sent alone
        s.release_to_talk(SPOKEN)


def PTT_PRESS(s: ConversationSession) -> None:
    s.press_to_talk()


def FAIL(s: ConversationSession) -> None:
    s.failed("the decoder could not be loaded")


# (starting state, barge-in, what happens, the state after, questions queued, a notice containing)
CASES = [
    ("loading", False, [TYPED], "loading", 0, "still loading"),
    ("loading", False, [PTT_PRESS], "loading", 0, "still loading"),
    ("loading", False, [SPEECH], "loading", 0, None),
    ("loading", False, [FAIL], "error", 0, None),
    ("error", False, [TYPED], "error", 0, "could not start"),
    ("listening", False, [SPEECH], "hearing", 0, None),
    ("listening", False, [TYPED], "thinking", 1, None),
    ("listening", False, [MUTE], "muted", 0, None),
    ("listening", False, [PTT_NOTHING], "listening", 0, "nothing was said"),
    ("listening", False, [PTT_SPEECH], "thinking", 1, None),
    ("listening", False, [KEY_INTERRUPT], "listening", 0, None),
    ("listening", False, [REPLY_OVER], "listening", 0, None),
    ("hearing", False, [END], "thinking", 1, None),
    ("hearing", False, [DISCARD], "listening", 0, None),
    ("hearing", False, [MUTE], "muted", 0, None),
    ("hearing", False, [MUTE, END], "muted", 0, None),
    ("hearing", False, [PAUSE], "pausing", 1, None),  # the reply is prepared, held
    ("pausing", False, [RESUME], "hearing", 1, None),  # ... and dropped (the queue holds it, dropped)
    ("pausing", False, [END], "thinking", 1, None),  # ... and released: no second question
    ("pausing", False, [RESUME, END], "thinking", 2, None),
    ("pausing", False, [DISCARD], "listening", 1, None),
    ("pausing", False, [MUTE], "muted", 1, None),
    ("pausing", False, [PTT_PRESS], "hearing", 1, None),
    ("pausing", False, [TYPED], "thinking", 2, None),
    ("thinking", False, [SPEECH, PAUSE], "thinking", 0, None),  # nothing is prepared while busy
    ("thinking", False, [FIRST_AUDIO], "speaking", 0, None),
    ("thinking", False, [KEY_INTERRUPT], "interrupted", 0, None),
    ("thinking", False, [REPLY_OVER], "listening", 0, None),
    ("thinking", False, [SPEECH], "thinking", 0, None),  # half-duplex: heard, answered next
    ("thinking", False, [SPEECH, END], "thinking", 1, None),
    ("thinking", False, [SPEECH, REPLY_OVER], "hearing", 0, None),
    ("thinking", True, [SPEECH], "hearing", 0, None),  # barge-in cuts the reply being prepared
    ("thinking", False, [PTT_PRESS], "hearing", 0, None),
    ("thinking", False, [PTT_NOTHING], "listening", 0, "nothing was said"),
    ("thinking", False, [MUTE], "thinking", 0, None),
    ("thinking", False, [MUTE, REPLY_OVER], "muted", 0, None),
    ("speaking", False, [KEY_INTERRUPT], "interrupted", 0, None),
    ("speaking", False, [REPLY_OVER], "listening", 0, None),
    ("speaking", False, [TYPED, REPLY_OVER], "thinking", 1, None),  # the next question waits
    ("speaking", True, [SPEECH], "hearing", 0, None),
    ("speaking", False, [PTT_SPEECH], "thinking", 1, None),
    ("interrupted", False, [REPLY_OVER], "listening", 0, None),
    ("interrupted", False, [SPEECH], "hearing", 0, None),
    ("interrupted", False, [SPEECH, REPLY_OVER], "hearing", 0, None),
    ("muted", False, [UNMUTE], "listening", 0, None),
    ("muted", False, [SPEECH], "muted", 0, None),
    ("muted", False, [SPEECH, END], "muted", 0, None),
    ("muted", False, [PTT_NOTHING], "muted", 0, "muted"),
    ("muted", False, [TYPED], "thinking", 1, None),
    ("muted", False, [TYPED, TAKEN, REPLY_OVER], "muted", 0, None),
]


@pytest.mark.parametrize("start,barge_in,actions,expected,queued,notice", CASES,
                         ids=[f"{c[0]}-{'+'.join(a.__name__ for a in c[2])}{'-barge-in' if c[1] else ''}" for c in CASES])
def test_every_move_of_the_turn_taking_state(config: Config, parts: Components, start: str, barge_in: bool,
                                             actions: list, expected: str, queued: int, notice: str | None) -> None:
    session, recorder = session_in(start, config, parts, barge_in)
    for action in actions:
        action(session)
    assert session.state == expected
    assert session.questions.qsize() == queued
    for old, new in recorder.moves():
        assert new in TRANSITIONS[old]
    if notice is None:
        assert not [n for n in recorder.notices() if "nothing" in n or "loading" in n or "muted" in n]
    else:
        assert any(notice in n for n in recorder.notices()), recorder.notices()


def test_a_move_the_table_does_not_allow_is_a_bug(config: Config, parts: Components) -> None:
    session, _ = session_in("listening", config, parts)
    with pytest.raises(IllegalTransition):
        session.move("speaking", "no question was asked")


def test_state_changed_events_say_where_from_and_why(config: Config, parts: Components) -> None:
    session, recorder = session_in("listening", config, parts)
    SPEECH(session)
    (event,) = [e for e in recorder.events if isinstance(e, StateChanged)]
    assert (event.old, event.new, event.why) == ("listening", "hearing", "speech")


def test_a_whole_turn_goes_thinking_speaking_listening(config: Config, parts: Components) -> None:
    session, recorder = session_in("listening", config, parts)
    session.ask(TurnInput(text="How long should green tea steep?"))
    result = session.run_turn(session.next_question())
    session.turn_over()
    assert recorder.moves() == [("listening", "thinking"), ("thinking", "speaking"), ("speaking", "listening")]
    assert session.transcript == [("How long should green tea steep?", result.finished.reply_text, False)]
    assert len(session.history.turns) == 1


def test_no_session_folder_until_the_first_turn_and_the_transcript_goes_there(config: Config, parts: Components,
                                                                              tmp_path: Path) -> None:
    saving = dataclasses.replace(config, sessions=dataclasses.replace(config.sessions, dir=str(tmp_path)))
    session = ConversationSession(saving, Recorder(), save=True)
    session.ready(parts)
    assert list(tmp_path.iterdir()) == []
    session.ask(TurnInput(text="first"))
    session.run_turn(session.next_question())
    (folder,) = tmp_path.iterdir()
    assert [t["question"] for t in read_turns(folder / "turns.jsonl")] == ["first"]
    path = session.save_transcript()
    assert path == folder / "transcript.md" and "**You:** first" in path.read_text()


def test_switching_to_an_unknown_voice_is_refused_with_one_line(config: Config, parts: Components) -> None:
    session, recorder = session_in("listening", config, parts)
    session.set_voice("opera")
    assert session.settings.voice == config.voice
    assert recorder.notices() and recorder.notices()[0].startswith("unknown voice 'opera'")


# --- retrieval modes: loaded on demand, or refused ------------------------------------------------


@pytest.fixture(scope="module")
def rag_config(tiny_rag_config: Config, config: Config) -> Config:
    """The index of knowledge/, with retrieval off at the start."""
    return dataclasses.replace(tiny_rag_config, retrieval=dataclasses.replace(tiny_rag_config.retrieval, rag="off"),
                               sessions=config.sessions)


def wait_for_settings(events: queue.Queue, rag: str) -> SettingsChanged:
    while True:
        event = events.get(timeout=120)
        if isinstance(event, SettingsChanged) and event.rag == rag and not event.loading:
            return event


def test_a_mode_whose_models_are_not_loaded_is_loaded_while_the_conversation_goes_on(rag_config: Config) -> None:
    parts = load_components(rag_config)  # rag off: no retrieval models
    events: queue.Queue = queue.Queue()
    session = ConversationSession(rag_config, events.put, save=False)
    session.ready(parts, load_modes=lambda modes: add_retrieval_modes(rag_config, parts, modes))
    try:
        assert session.loaded_modes == frozenset()
        session.set_rag("e2e")
        assert session.settings.rag == "off"  # not before its models are there
        session.ask(TurnInput(text="a question while the encoders load"))
        session.run_turn(session.next_question())
        session.turn_over()
        shown = wait_for_settings(events, "e2e")
        assert shown.rag == "e2e" and session.loaded_modes >= {"e2e", "text"}
        loading = [e.loading for e in list(events.queue) if isinstance(e, SettingsChanged)]
        assert all(not modes for modes in loading)  # the last word was "loaded"
    finally:
        parts.close()


def test_a_mode_that_cannot_be_loaded_is_refused_and_the_settings_stay(config: Config, parts: Components,
                                                                        tmp_path: Path) -> None:
    no_index = dataclasses.replace(config, retrieval=dataclasses.replace(
        config.retrieval, index_dir=str(tmp_path / "missing-index"), knowledge_dir=str(tmp_path)))
    events: queue.Queue = queue.Queue()
    session = ConversationSession(no_index, events.put, save=False)
    session.ready(parts, load_modes=lambda modes: add_retrieval_modes(no_index, parts, modes))
    session.set_rag("asr")
    notice = events.get(timeout=60)
    while not isinstance(notice, Notice):
        notice = events.get(timeout=60)
    assert notice.text.startswith("cannot switch to retrieval asr:") and "\n" not in notice.text
    assert session.settings.rag == "off" and session.loading == set()


def test_without_a_loader_a_switch_to_an_unloaded_mode_is_refused(config: Config, parts: Components) -> None:
    session, recorder = session_in("listening", config, parts)
    session.set_rag("asr")
    assert session.settings.rag == "off"
    assert "its models (asr, text) are not loaded" in recorder.notices()[0]
    session.set_rag("off")  # needs nothing
    assert any(isinstance(e, SettingsChanged) and e.rag == "off" for e in recorder.events)


def test_a_turn_reports_finished_before_the_state_returns_to_listening(config: Config, parts: Components) -> None:
    session, recorder = session_in("listening", config, parts)
    TYPED(session)
    session.run_turn(session.next_question())
    session.turn_over()
    kinds = [type(e) for e in recorder.events]
    assert kinds.index(TurnFinished) < max(i for i, k in enumerate(kinds) if k is StateChanged)


# --- the reply prepared in a pause ----------------------------------------------------------------


def spoken(seconds: float, pitch: float = 220.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (8000 * np.sin(2 * np.pi * pitch * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.int16)


def paused(audio: np.ndarray) -> Paused:
    return Paused(t=2.0, start=0.3, end=0.3 + audio.size / 16000, audio=audio, audio_start=0.0)


def ended(audio: np.ndarray) -> UtteranceEnded:
    return UtteranceEnded(t=2.5, start=0.3, end=0.3 + audio.size / 16000, audio=audio, audio_start=0.0)


def answering(session: ConversationSession) -> tuple[TurnInput, threading.Thread]:
    """The conversation's thread takes the next question and answers it."""
    question = session.next_question()
    thread = threading.Thread(target=session.run_turn, args=(question,))
    thread.start()
    return question, thread


SHOWN = (TurnStarted, TextDelta, AudioChunk, TurnConfirmed, TurnFinished)


def shown(recorder: Recorder) -> list[Event]:
    return [e for e in recorder.events if isinstance(e, SHOWN)]


@pytest.fixture
def saving(config: Config, tmp_path: Path) -> Config:
    return dataclasses.replace(config, sessions=dataclasses.replace(config.sessions, dir=str(tmp_path)))


def test_the_reply_prepared_in_the_pause_shows_nothing_until_the_end_is_confirmed_then_plays(
        saving: Config, parts: Components, tmp_path: Path) -> None:
    recorder = Recorder()
    session = ConversationSession(saving, recorder, save=True)
    session.ready(parts)
    SPEECH(session)
    audio = spoken(1.2)
    session.on_audio(paused(audio))
    question, thread = answering(session)
    assert question.hold is not None and question.hold.audio_ready.wait(120)  # its first audio waits
    assert shown(recorder) == [] and session.transcript == [] and list(tmp_path.iterdir()) == []
    session.on_audio(ended(audio))
    thread.join(120)
    session.turn_over()
    events = shown(recorder)
    assert isinstance(events[0], TurnStarted) and isinstance(events[-1], TurnFinished)
    assert any(isinstance(e, TurnConfirmed) for e in events) and any(isinstance(e, AudioChunk) for e in events)
    assert recorder.moves()[1:] == [("listening", "hearing"), ("hearing", "pausing"), ("pausing", "thinking"),
                                ("thinking", "speaking"), ("speaking", "listening")]
    timings = events[-1].timings
    assert timings.preemptive_ms > 0 and timings.confirmed_to_audio_ms == 0
    assert session.questions.empty() and len(session.history.turns) == 1
    (turn,) = read_turns(session.log.path)
    assert turn["turn"] == 1 and turn["timings"]["preemptive_ms"] > 0


def test_speech_after_the_pause_drops_the_prepared_reply_and_one_reply_answers_the_whole_utterance(
        saving: Config, parts: Components, tmp_path: Path) -> None:
    recorder = Recorder()
    session = ConversationSession(saving, recorder, save=True)
    session.ready(parts)
    SPEECH(session)
    first, whole = spoken(0.8), np.concatenate([spoken(0.8), np.zeros(4000, np.int16), spoken(0.9, 330.0)])
    session.on_audio(paused(first))
    question, thread = answering(session)
    assert question.hold.audio_ready.wait(120)
    RESUME(session)
    thread.join(120)
    assert not thread.is_alive() and question.hold.dropped
    session.turn_over()
    assert session.state == "hearing"
    assert shown(recorder) == [] and session.transcript == [] and len(session.history.turns) == 0
    assert list(tmp_path.iterdir()) == []  # no session folder: nothing was logged
    session.on_audio(ended(whole))
    question, thread = answering(session)
    thread.join(120)
    session.turn_over()
    assert question.hold is None and np.array_equal(question.audio, as_float32(whole))
    finished = [e for e in shown(recorder) if isinstance(e, TurnFinished)]
    assert len(finished) == 1 and finished[0].turn == 1
    assert session.transcript == [(f"(spoken, {whole.size / 16000:.1f} s)", finished[0].reply_text, False)]
    assert [t["turn"] for t in read_turns(session.log.path)] == [1]


def test_a_confirmed_utterance_longer_than_the_prepared_one_is_answered_whole(config: Config,
                                                                              parts: Components) -> None:
    recorder = Recorder()
    session = ConversationSession(config, recorder, save=False)
    session.ready(parts)
    SPEECH(session)
    first, whole = spoken(0.8), spoken(1.6)
    session.on_audio(paused(first))
    session.on_audio(ended(whole))  # the same utterance, but it went on: not what was prepared
    prepared, thread = answering(session)
    thread.join(120)
    asked, thread = answering(session)
    thread.join(120)
    assert prepared.hold.dropped and asked.hold is None and asked.audio.size == whole.size
    (started,) = [e for e in shown(recorder) if isinstance(e, TurnStarted)]
    assert started.audio.size == whole.size and len(session.transcript) == 1


def test_the_level_meter_carries_the_end_of_turn_probability(config: Config, parts: Components) -> None:
    from voicechat.audio.events import Level

    session, recorder = session_in("pausing", config, parts)
    session.on_audio(Level(t=2.0, dbfs=-50.0, noise_floor_dbfs=-60.0, speech=False, speaking=True,
                           turn_probability=0.4213))
    (level,) = [e for e in recorder.events if isinstance(e, MicLevel)]
    assert level.turn_probability == 0.42
