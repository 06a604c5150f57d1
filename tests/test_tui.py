"""The conversation screen, driven through Pilot with a recording stand-in for the engine side."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from textual.widgets import DataTable, Input

from voicechat.config import Config
from voicechat.events import (
    AudioWarnings, DeviceChoice,
    AudioChunk, Event, LoadProgress, MicLevel, PromptReady, Retrieved, RoundDiscarded, RoundStarted, SettingsChanged,
    Source, StageFailed, StateChanged, TextDelta, TurnFinished, TurnStarted, TurnTimings,
)
from voicechat.tui.app import VoicechatApp
from voicechat.tui.screens.config_view import ConfigScreen
from voicechat.tui.screens.devices import DevicePicker
from voicechat.tui.screens.help import HelpScreen
from voicechat.tui.widgets.conversation import AssistantTurn, UserTurn
from voicechat.tui.widgets.status_bar import StatusBar
from voicechat.tui.widgets.timings import TimingsPanel


class RecordingControl:
    """Test double for the engine side: records the app's commands, emits events on request."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.emit: Callable[[Event], None] | None = None

    def start(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit

    def __getattr__(self, name: str):
        if name.startswith(("ask_", "toggle_", "cycle_", "interrupt", "use_", "close")):
            return lambda *args: self.calls.append((name, *args))
        raise AttributeError(name)

    def input_devices(self) -> list[DeviceChoice]:
        return [DeviceChoice(0, "Built-in microphone", True), DeviceChoice(3, "USB headset", False)]

    def save_transcript(self) -> Path:
        self.calls.append(("save_transcript",))
        return Path("/sessions/20261203-101500/transcript.md")


def sources() -> tuple[Source, ...]:
    return (Source(1, 0.81, "tea-brewing.html", "Green tea", (5, 7), "Green tea is best brewed at 70-80 °C.", True),
            Source(2, 0.42, "solar-system.txt", "", (1, 3), "The Solar System formed 4.6 billion years ago.", False))


def a_turn(t0: float = 100.0) -> list[Event]:
    audio = (np.sin(np.linspace(0, 300, 32000)) * 0.3).astype(np.float32)
    return [
        TurnStarted(turn=1, question=None, audio=audio, speech_end_t=t0, mode="e2e", voice="default", t=t0 + 0.3),
        Retrieved(started=t0 + 0.3, mode="e2e", round=1, sources=sources(), t=t0 + 0.35),
        PromptReady(tokens=312, t=t0 + 0.36),
        TextDelta(text="Brew green tea ", t=t0 + 0.5),
        TextDelta(text="at 70 to 80 degrees.", t=t0 + 0.6),
        AudioChunk(samples=np.zeros(1764, np.float32), rate=22050, t=t0 + 0.9),
    ]


@pytest.fixture
def control() -> RecordingControl:
    return RecordingControl()


async def emit_all(app: VoicechatApp, control: RecordingControl, events: list[Event], pilot) -> None:
    for event in events:
        control.emit(event)
    await pilot.pause()


async def test_a_spoken_turn_shows_question_reply_sources_and_timings(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        events = a_turn()
        timings = TurnTimings.from_events(events, end_t=101.5)
        await emit_all(app, control, events + [TurnFinished(turn=1, reply_text="", interrupted=False, timings=timings)], pilot)
        user = app.query_one(UserTurn)
        assert user.seconds == pytest.approx(2.0)
        reply = app.query_one(AssistantTurn)
        assert reply.text == "Brew green tea at 70 to 80 degrees."
        assert not reply.interrupted
        table = app.query_one(DataTable)
        assert table.row_count == 2
        assert [str(c) for c in table.get_row_at(0)[:4]] == ["1", "0.810", "✔", "tea-brewing.html:5-7"]
        panel = app.query_one(TimingsPanel)
        assert panel.history[-1].first_audio_ms == pytest.approx(900)
        assert panel.history[-1].prompt_tokens == 312


async def test_a_discarded_round_is_shown_struck_and_the_final_reply_below_it(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(140, 40)) as pilot:
        turn = a_turn()
        events = turn[:1] + [RoundStarted(round=1, mode="e2e"), TextDelta(text="insufficient information"),
                             RoundDiscarded(round=1, why="retrying with ASR retrieval"),
                             RoundStarted(round=2, mode="asr"), TextDelta(text="Brew it at 70 degrees.")]
        await emit_all(app, control, events + [TurnFinished(turn=1, reply_text="Brew it at 70 degrees.",
                                                            interrupted=False, timings=TurnTimings())], pilot)
        first, final = app.query(AssistantTurn)
        assert first.has_class("discarded") and "retrying with ASR retrieval" in str(first.who.render())
        assert final.text == "Brew it at 70 degrees." and not final.has_class("discarded")


async def test_interrupted_reply_is_marked(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(140, 40)) as pilot:
        await emit_all(app, control, a_turn()[:4] + [TurnFinished(turn=1, reply_text="x", interrupted=True,
                                                                 timings=TurnTimings())], pilot)
        reply = app.query_one(AssistantTurn)
        assert reply.interrupted and reply.has_class("interrupted")


async def test_typed_question_is_sent_and_the_box_cleared(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("slash")
        await pilot.press(*"how hot for green tea?")
        await pilot.press("enter")
        assert ("ask_text", "how hot for green tea?") in control.calls
        assert app.query_one("#ask", Input).value == ""
        await pilot.press("m")  # typed into the box, not a command
        assert ("toggle_muted",) not in control.calls
        await pilot.press("escape")
        assert ("interrupt",) in control.calls
        await pilot.press("m")
        assert ("toggle_muted",) in control.calls


@pytest.mark.parametrize("key,call", [
    ("r", "cycle_rag"), ("t", "cycle_two_round"), ("v", "cycle_voice"), ("m", "toggle_muted"),
    ("space", "toggle_push_to_talk"),
])
async def test_keys_reach_the_conversation_and_the_status_bar_waits_for_its_answer(
        control: RecordingControl, key: str, call: str) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await pilot.pause()
        before = app.query_one(StatusBar).status
        await pilot.press(key)
        assert (call,) in control.calls
        assert app.query_one(StatusBar).status == before  # nothing is shown until it is true


async def test_status_bar_shows_the_settings_the_conversation_reports(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await emit_all(app, control, [SettingsChanged(rag="e2e", two_round="off", voice="calm", loading=("asr",))], pilot)
        status = app.query_one(StatusBar).status
        assert (status.rag, status.voice, status.loading) == ("e2e", "calm", ("asr",))
        assert "loading asr" in str(status_text(app))
        await emit_all(app, control, [SettingsChanged(rag="asr", two_round="off", voice="calm", muted=True)], pilot)
        assert "rag:asr" in str(status_text(app)) and "muted" in str(status_text(app))


def status_text(app: VoicechatApp):
    return app.query_one(StatusBar).status_text()


async def test_escape_interrupts(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("escape")
        assert ("interrupt",) in control.calls


async def test_save_transcript_shows_where_it_went(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("s")
        await pilot.pause()
        assert ("save_transcript",) in control.calls
        assert any("20261203-101500/transcript.md" in str(n.message) for n in app._notifications)


async def test_help_config_and_device_screens(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("c")
        assert isinstance(app.screen, ConfigScreen)
        await pilot.press("escape")
        await pilot.press("d")
        assert isinstance(app.screen, DevicePicker)
        await pilot.press("down", "enter")
        await pilot.pause()
        assert ("use_input_device", 3) in control.calls
        assert not isinstance(app.screen, DevicePicker)


async def test_state_level_and_failure_are_shown(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await emit_all(app, control, [StateChanged("loading", "listening", "ready"), MicLevel(0.5)], pilot)
        status = app.query_one(StatusBar).status
        assert status.state == "listening" and status.level == 0.5
        await emit_all(app, control, [StageFailed(stage="lm", message="server gone")], pilot)
        assert app.query_one(StatusBar).status.state == "listening"  # a failed stage is a notice, not a state
        assert "lm failed: server gone" in [str(n.render()) for n in app.query(".notice")]


async def test_audio_warnings_are_counted_in_the_status_bar(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        assert "audio warnings" not in str(app.query_one(StatusBar).status_text())
        warning = "ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred"
        await emit_all(app, control, [AudioWarnings(1, warning), AudioWarnings(3, warning)], pilot)
        assert "audio warnings: 3" in str(app.query_one(StatusBar).status_text())


async def test_loading_screen_follows_progress(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await emit_all(app, control, [LoadProgress("speech tokenizer", 1, 3)], pilot)
        assert type(app.screen).__name__ == "LoadingScreen"
        await emit_all(app, control, [LoadProgress("decoder", 2, 3), LoadProgress("ready", 3, 3)], pilot)
        assert type(app.screen).__name__ != "LoadingScreen"


async def test_quit_closes_the_engine(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("q")
    assert ("close",) in control.calls


def test_main_screen_snapshot(snap_compare, control: RecordingControl) -> None:
    async def run_before(pilot) -> None:
        await pilot.pause()
        events = a_turn()
        timings = TurnTimings.from_events(events, end_t=101.5)
        for event in events + [TurnFinished(turn=1, reply_text="", interrupted=False, timings=timings)]:
            control.emit(event)
        await pilot.pause()

    assert snap_compare(VoicechatApp(Config(), control), terminal_size=(140, 36), run_before=run_before)


@pytest.mark.parametrize("key", ["question_mark", "c"])
def test_help_and_config_screen_snapshots(snap_compare, control: RecordingControl, key: str) -> None:
    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.press(key)
        await pilot.pause()

    assert snap_compare(VoicechatApp(Config(), control), terminal_size=(120, 36), run_before=run_before)


async def test_while_pausing_the_status_shows_the_end_of_turn_probability(control: RecordingControl) -> None:
    app = VoicechatApp(Config(), control)
    async with app.run_test(size=(140, 30)) as pilot:
        await emit_all(app, control, [StateChanged("loading", "listening", "ready"),
                                      StateChanged("listening", "hearing", "speech"),
                                      MicLevel(0.5, turn_probability=0.37)], pilot)
        assert "finished?" not in str(app.query_one(StatusBar).status_text())  # still speaking
        await emit_all(app, control, [StateChanged("hearing", "pausing", "pause"), MicLevel(0.1, turn_probability=0.42)],
                       pilot)
        line = str(app.query_one(StatusBar).status_text())
        assert "PAUSING" in line and "finished? 0.42" in line
