"""The conversation screen. It only renders engine events and forwards the user's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Input, Label

from voicechat.audio.resample import MODEL_RATE
from voicechat.config import Config
from voicechat.errors import VoicechatError
from voicechat.events import (
    AudioWarnings,
    DeviceChoice,
    Event,
    LoadProgress,
    MicLevel,
    Notice,
    Retrieved,
    RoundDiscarded,
    SettingsChanged,
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


class ConversationControl(Protocol):
    """What the app needs from the conversation; calls return at once (work runs elsewhere) and
    their outcome comes back as events."""

    def start(self, emit: Callable[[Event], None]) -> None: ...
    def ask_text(self, text: str) -> None: ...
    def interrupt(self) -> None: ...
    def toggle_muted(self) -> None: ...
    def toggle_push_to_talk(self) -> None: ...
    def cycle_rag(self) -> None: ...
    def cycle_two_round(self) -> None: ...
    def cycle_voice(self) -> None: ...
    def input_devices(self) -> list[DeviceChoice]: ...
    def use_input_device(self, index: int) -> None: ...
    def save_transcript(self) -> Path: ...
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

    def __init__(self, config: Config, control: ConversationControl) -> None:
        super().__init__()
        self.config = config
        self.control = control
        self.reply: AssistantTurn | None = None  # where the reply's text goes
        self.loading: LoadingScreen | None = None
        # The main screen's widgets, reachable while another screen is on top.
        self.conversation = Conversation(id="conversation")
        self.sources = SourcesPanel(id="sources")
        self.timings = TimingsPanel(id="timings")
        self.status = StatusBar(id="status")
        self.renderers: dict[type[Event], Callable] = {
            LoadProgress: self.show_progress,
            StateChanged: self.show_state,
            SettingsChanged: self.show_settings,
            MicLevel: self.show_level,
            TurnStarted: self.show_turn,
            Retrieved: self.show_sources,
            TextDelta: self.show_text,
            RoundDiscarded: self.show_discarded_round,
            StageFailed: self.show_failure,
            Notice: self.show_notice,
            AudioWarnings: self.show_audio_warnings,
            TurnFinished: self.show_finished,
        }

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
        self.status.set(backend="remote engine" if self.config.engine.url else self.config.backend.kind)
        self.set_focus(None)
        self.control.start(lambda event: self.post_message(EngineEvent(event)))

    # --- engine events ----------------------------------------------------------------------------

    def on_engine_event(self, message: EngineEvent) -> None:
        render = self.renderers.get(type(message.event))
        if render is not None:
            render(message.event)

    def show_progress(self, event: LoadProgress) -> None:
        if self.loading is None and event.done < event.total:
            self.loading = LoadingScreen(event.total)
            self.push_screen(self.loading)
        if self.loading is not None:
            self.loading.show_progress(event.step, event.done)
            if event.done >= event.total:
                self.pop_screen()
                self.loading = None

    def show_state(self, event: StateChanged) -> None:
        self.status.set(state=event.new, detail=event.why if event.new == "error" else "")

    def show_settings(self, event: SettingsChanged) -> None:
        self.status.set(rag=event.rag, two_round=event.two_round, voice=event.voice, loading=event.loading,
                        muted=event.muted)

    def show_level(self, event: MicLevel) -> None:
        self.status.set(level=event.level, turn_probability=event.turn_probability)

    def show_turn(self, event: TurnStarted) -> None:
        seconds = 0.0 if event.audio is None else len(event.audio) / MODEL_RATE
        self.conversation.add_user(seconds, event.audio, event.question)
        self.reply = self.conversation.add_assistant()

    def show_sources(self, event: Retrieved) -> None:
        self.sources.show(event.sources)

    def show_text(self, event: TextDelta) -> None:
        if self.reply is not None:
            self.reply.append(event.text)

    def show_discarded_round(self, event: RoundDiscarded) -> None:
        if self.reply is not None:
            self.reply.discard(event.why)
        self.reply = self.conversation.add_assistant()

    def show_failure(self, event: StageFailed) -> None:
        self.conversation.add_notice(f"{event.stage} failed: {event.message}", error=True)

    def show_notice(self, event: Notice) -> None:
        self.notify(event.text, severity="error" if event.error else "information")

    def show_audio_warnings(self, event: AudioWarnings) -> None:
        self.status.set(audio_warnings=event.count)

    def show_finished(self, event: TurnFinished) -> None:
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
        self.control.toggle_muted()

    def action_push_to_talk(self) -> None:
        self.control.toggle_push_to_talk()

    def action_cycle_rag(self) -> None:
        self.control.cycle_rag()

    def action_cycle_two_round(self) -> None:
        self.control.cycle_two_round()

    def action_cycle_voice(self) -> None:
        self.control.cycle_voice()

    def action_save_transcript(self) -> None:
        try:
            path = self.control.save_transcript()
        except VoicechatError as error:
            self.notify(str(error), severity="error")
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
        keys = [(self.key_names(b), b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(keys))

    def key_names(self, binding: Binding) -> str:
        return ", ".join(self.get_key_display(Binding(key, binding.action)) for key in binding.key.split(","))

    async def action_quit(self) -> None:
        self.control.close()
        self.exit()
