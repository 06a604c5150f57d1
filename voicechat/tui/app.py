"""The conversation screen. It only renders engine events and forwards the user's commands."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, Protocol

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Input, Label

from voicechat.config import Config
from voicechat.events import (
    AudioWarnings,
    DeviceChoice,
    Event,
    LoadProgress,
    MicLevel,
    Retrieved,
    StageFailed,
    StateChanged,
    TextDelta,
    TurnFinished,
    TurnStarted,
)
from voicechat.tui.screens.config_view import ConfigScreen
from voicechat.tui.screens.devices import DevicePicker
from voicechat.tui.screens.help import HelpScreen
from voicechat.tui.screens.loading import LoadingScreen
from voicechat.tui.widgets.conversation import AssistantTurn, Conversation
from voicechat.tui.widgets.sources import SourcesPanel
from voicechat.tui.widgets.status_bar import StatusBar
from voicechat.tui.widgets.timings import TimingsPanel

RAG_MODES = ["e2e", "asr", "off"]
TWO_ROUND_MODES = ["off", "rewrite", "fallback"]


class ConversationControl(Protocol):
    """What the app needs from the engine side; calls must return at once (work runs elsewhere)."""

    def start(self, emit: Callable[[Event], None]) -> None: ...
    def ask_text(self, text: str) -> None: ...
    def interrupt(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    def push_to_talk(self, active: bool) -> None: ...
    def set_rag(self, mode: str) -> None: ...
    def set_two_round(self, mode: str) -> None: ...
    def set_voice(self, name: str) -> None: ...
    def input_devices(self) -> list[DeviceChoice]: ...
    def use_input_device(self, index: int) -> None: ...
    def transcript(self) -> str: ...
    def close(self) -> None: ...


class EngineEvent(Message):
    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class VoicechatApp(App[None]):
    TITLE = "voicechat"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("escape", "interrupt", "Interrupt"),
        Binding("m", "toggle_mute", "Mute"),
        Binding("space", "push_to_talk", "Push to talk"),
        Binding("r", "cycle_rag", "RAG mode"),
        Binding("t", "cycle_two_round", "Two-round"),
        Binding("v", "cycle_voice", "Voice"),
        Binding("s", "save_transcript", "Save"),
        Binding("d", "pick_device", "Device"),
        Binding("c", "show_config", "Config"),
        Binding("slash", "focus_input", "Type"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q,ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, config: Config, control: ConversationControl, save_dir: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.control = control
        self.save_dir = save_dir or Path.cwd()
        self.rag = config.retrieval.rag
        self.two_round = config.retrieval.two_round
        self.voice = config.voice
        self.muted = False
        self.talking = False
        self.level = 0.0
        self.reply: AssistantTurn | None = None
        self.loading: LoadingScreen | None = None
        # The main screen's widgets, reachable while another screen is on top.
        self.conversation = Conversation(id="conversation")
        self.sources = SourcesPanel(id="sources")
        self.timings = TimingsPanel(id="timings")
        self.status = StatusBar(id="status")

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield self.conversation
            with Vertical(id="side"):
                yield Label("Sources", classes="panel-title")
                yield self.sources
                yield Label("Timings (ms after you stopped speaking)", classes="panel-title")
                yield self.timings
        yield Input(placeholder="Type a question and press enter (/ to focus, escape to leave)", id="ask")
        yield self.status
        yield Footer()

    def on_mount(self) -> None:
        self.status.set(rag=self.rag, two_round=self.two_round, voice=self.voice,
                        backend=self.config.backend.kind)
        self.set_interval(1 / self.config.ui.level_meter_hz, self.refresh_level)
        self.set_focus(None)
        self.control.start(lambda event: self.post_message(EngineEvent(event)))

    def refresh_level(self) -> None:
        self.status.set(level=0.0 if self.muted else self.level)

    # --- engine events ----------------------------------------------------------------------------

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        handler = getattr(self, f"show_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def show_LoadProgress(self, event: LoadProgress) -> None:
        if self.loading is None and event.done < event.total:
            self.loading = LoadingScreen(event.total)
            self.push_screen(self.loading)
        if self.loading is not None:
            self.loading.show_progress(event.step, event.done)
            if event.done >= event.total:
                self.pop_screen()
                self.loading = None

    def show_StateChanged(self, event: StateChanged) -> None:
        self.status.set(state="muted" if self.muted and event.state == "listening" else event.state,
                        detail=event.detail)

    def show_MicLevel(self, event: MicLevel) -> None:
        self.level = event.level  # drawn by the timer, not per event

    def show_TurnStarted(self, event: TurnStarted) -> None:
        seconds = 0.0 if event.audio is None else len(event.audio) / 16000
        self.conversation.add_user(seconds, event.audio, event.question)
        self.reply = self.conversation.add_assistant()
        self.status.set(state="thinking", detail="")

    def show_Retrieved(self, event: Retrieved) -> None:
        self.sources.show(event.sources)

    def show_TextDelta(self, event: TextDelta) -> None:
        if self.reply is not None:
            self.reply.append(event.text)

    def show_AudioChunk(self, event: Event) -> None:
        self.status.set(state="speaking")

    def show_StageFailed(self, event: StageFailed) -> None:
        self.conversation.add_notice(f"{event.stage} failed: {event.message}", error=True)
        self.status.set(state="error", detail=event.message)

    def show_AudioWarnings(self, event: AudioWarnings) -> None:
        self.status.set(audio_warnings=event.count)

    def show_TurnFinished(self, event: TurnFinished) -> None:
        if self.reply is not None:
            self.reply.finish(event.interrupted)
            self.reply = None
        self.timings.show(event.timings)

    # --- user commands ----------------------------------------------------------------------------

    @on(Input.Submitted, "#ask")
    def ask(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.control.ask_text(text)

    def action_focus_input(self) -> None:
        self.query_one("#ask", Input).focus()

    def action_interrupt(self) -> None:
        if self.focused is self.query_one("#ask", Input):
            self.set_focus(None)
        self.control.interrupt()

    def action_toggle_mute(self) -> None:
        self.muted = not self.muted
        self.control.set_muted(self.muted)
        self.status.set(state="muted" if self.muted else "listening")

    def action_push_to_talk(self) -> None:
        self.talking = not self.talking
        self.control.push_to_talk(self.talking)
        self.status.set(state="hearing" if self.talking else "thinking")

    def action_cycle_rag(self) -> None:
        self.rag = _next(RAG_MODES, self.rag)
        self.control.set_rag(self.rag)
        self.status.set(rag=self.rag)

    def action_cycle_two_round(self) -> None:
        self.two_round = _next(TWO_ROUND_MODES, self.two_round)
        self.control.set_two_round(self.two_round)
        self.status.set(two_round=self.two_round)

    def action_cycle_voice(self) -> None:
        self.voice = _next(list(self.config.voices), self.voice)
        self.control.set_voice(self.voice)
        self.status.set(voice=self.voice)
        self.notify(self.config.voices[self.voice].description, title=f"voice: {self.voice}")

    def action_save_transcript(self) -> None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.save_dir / f"voicechat-transcript-{stamp}.md"
        try:
            path.write_text(self.control.transcript(), encoding="utf-8")
        except OSError as error:
            self.notify(f"could not save the transcript: {error.strerror}", severity="error")
            return
        self.notify(str(path), title="transcript saved")

    def action_pick_device(self) -> None:
        def chosen(device: DeviceChoice | None) -> None:
            if device is not None:
                self.control.use_input_device(device.index)
                self.notify(device.name, title="microphone")

        self.push_screen(DevicePicker(self.control.input_devices()), chosen)

    def action_show_config(self) -> None:
        self.push_screen(ConfigScreen(self.config))

    def action_help(self) -> None:
        self.push_screen(HelpScreen([b for b in self.BINDINGS if isinstance(b, Binding)]))

    async def action_quit(self) -> None:
        self.control.close()
        self.exit()


def _next(choices: list[str], current: str) -> str:
    return choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]
