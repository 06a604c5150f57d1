"""A live conversation: the models, the microphone and the speaker around a ConversationSession.

It loads the models and opens the audio devices on its own thread, then answers the session's
questions one at a time. The session owns every piece of conversation state; this module only
connects it to devices and threads. The TUI drives it through the few methods of its
ConversationControl protocol; it imports no UI code.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from voicechat.assemble import add_retrieval_modes, load_components
from voicechat.config import Config
from voicechat.engine import CollectingSpeaker, Components, TurnInput
from voicechat.errors import AudioError, VoicechatError
from voicechat.events import DeviceChoice, Event, LoadProgress, Notice, StageFailed
from voicechat.session import ConversationSession

log = logging.getLogger(__name__)

WAIT_FOR_PLAYBACK_S = 600.0


class LiveConversation:
    def __init__(self, config: Config, save: bool = True,
                 load: Callable[..., Components] | None = None, use_audio: bool = True) -> None:
        self.config = config
        self.load = load
        self.use_audio = use_audio
        self.emit: Callable[[Event], None] = lambda event: None
        self.session = ConversationSession(config, self._emit, save=save)
        self.listener = None
        self.player = None
        self.thread: threading.Thread | None = None
        self._closed = threading.Event()

    def _emit(self, event: Event) -> None:
        self.emit(event)

    # --- ConversationControl ----------------------------------------------------------------------

    def start(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.thread = threading.Thread(target=self._run, name="voicechat-conversation", daemon=True)
        self.thread.start()

    def ask_text(self, text: str) -> None:
        self.session.ask(TurnInput(text=text))

    def interrupt(self) -> None:
        if self.listener is not None:
            self.listener.interrupt(by="key")  # flushes the speaker; the session hears Interrupted
        else:
            self.session.interrupt(by="key")

    def toggle_muted(self) -> None:
        self.session.toggle_muted()

    def toggle_push_to_talk(self) -> None:
        """Press once to talk, again to send: everything heard between (pauses included) is one
        question."""
        if self.listener is None:
            self.emit(Notice("no microphone: press / to type your question", error=True))
        elif self.session.talking:
            self.session.release_to_talk(self.listener.stop_recording())
        elif self.session.press_to_talk():
            self.listener.start_recording()

    def cycle_rag(self) -> None:
        self.session.cycle_rag()

    def cycle_two_round(self) -> None:
        self.session.cycle_two_round()

    def cycle_voice(self) -> None:
        self.session.cycle_voice()

    def input_devices(self) -> list[DeviceChoice]:
        from voicechat.audio import devices

        try:
            found = devices.list_devices()
        except AudioError:
            return []
        return [DeviceChoice(d.index, d.name, d.is_default_input) for d in found if d.max_input_channels > 0]

    def use_input_device(self, index: int) -> None:
        if self.listener is None:
            return
        try:
            self.listener.start(index)
        except AudioError as error:
            self.emit(StageFailed(stage="microphone", message=str(error)))

    def save_transcript(self) -> Path:
        return self.session.save_transcript()

    def close(self) -> None:
        self._closed.set()
        self.session.close()
        if self.listener is not None:
            self.listener.stop()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)
        if self.player is not None:
            self.player.close()
        if self.session.parts is not None:
            self.session.parts.close()
        elif self.session.engine is not None:
            self.session.engine.close()  # a remote engine's connection

    # --- the conversation thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self.config.engine.url:
            if not self._connect():
                return
        else:
            parts = self._load()
            if parts is None or self._closed.is_set():
                return
            self.session.ready(parts, self._open_speaker(parts.decoder.sample_rate),
                               load_modes=lambda modes: add_retrieval_modes(self.config, parts, modes))
        self._open_microphone()
        while (question := self.session.next_question()) is not None:
            self._turn(question)

    def _load(self) -> Components | None:
        load = self.load or load_components
        try:
            return load(self.config, progress=lambda step, done, total: self.emit(LoadProgress(step, done, total)),
                        on_warning=lambda message: self.emit(StageFailed(stage="retrieval", message=message)))
        except VoicechatError as error:
            self.emit(LoadProgress("failed", 1, 1))
            self.session.failed(str(error))
            return None

    def _connect(self) -> bool:
        """A remote engine (engine.url): the models are there, the microphone and speaker here.
        Until the server first answers, the conversation waits (one line says why) and tries again
        in the background; later losses are the remote engine's to mend."""
        from voicechat.remote.client import EngineLink, RemoteEngine, token_from_env

        url = self.config.engine.url
        self.emit(LoadProgress("engine server", 0, 1))
        try:
            token = token_from_env(self.config.engine.token_env)
        except VoicechatError as error:
            self.emit(LoadProgress("failed", 1, 1))
            self.session.failed(str(error))
            return False
        link = self._first_link(lambda: EngineLink.open(url, token))
        if link is None:
            return False
        speaker = self._open_speaker(int(link.welcome["sample_rate"]))
        self.session.ready(None, engine=lambda emit: RemoteEngine(link, emit, speaker,
                                                                  reconnect=lambda: EngineLink.open(url, token)))
        self.session.engine.keep_connected()
        return True

    def _first_link(self, open_link):
        """The first connection, tried again until it works or the app closes."""
        from voicechat.remote.client import RECONNECT_WAITS_S

        failures, said = 0, ""
        while not self._closed.is_set():
            try:
                link = open_link()
            except VoicechatError as error:
                if failures == 0:
                    self.emit(LoadProgress("waiting for the engine server", 1, 1))  # the conversation screen shows
                if str(error) != said:  # once per reason, not once per attempt
                    said = str(error)
                    self.emit(StageFailed(stage="engine server", message=f"{error}; trying again in the background"))
                failures += 1
                self._closed.wait(RECONNECT_WAITS_S[min(failures, len(RECONNECT_WAITS_S)) - 1])
                continue
            if self._closed.is_set():
                link.close()
                return None
            self.emit(LoadProgress("ready", 1, 1))
            if failures:
                self.emit(Notice(f"connected to the engine server at {link.url}"))
            return link
        return None

    def _open_speaker(self, rate: int):
        if not self.use_audio:
            return CollectingSpeaker()
        from voicechat.audio.player import Player

        audio = self.config.audio
        try:
            self.player = Player(audio.output_device, audio.playback, source_rate=rate).open()
            return self.player
        except AudioError as error:
            self.emit(StageFailed(stage="speaker", message=f"{error}; replies are shown as text only"))
            return CollectingSpeaker()

    def _open_microphone(self) -> None:
        if not self.use_audio:
            self.emit(Notice("no microphone: press / to type your questions"))
            return
        from voicechat.audio.barge_in import load_barge_in_judge
        from voicechat.audio.echo import load_echo_canceller
        from voicechat.audio.listener import Listener
        from voicechat.audio.turn import load_turn_detector

        turn, warning = load_turn_detector(self.config)  # audio.turn: smart
        if warning:
            self.emit(Notice(warning))
        echo, warning = load_echo_canceller(self.config.audio.echo_cancellation, self.player)
        if warning:
            self.emit(Notice(warning))
        judge = None
        if echo is not None and self.config.audio.barge_in is not False:
            judge, warning = load_barge_in_judge()
            if warning:
                self.emit(Notice(warning))
        listener = Listener(self.config.audio, self.session.on_audio, self.player, turn=turn, echo=echo,
                            judge=judge)
        try:
            listener.start()
            self.listener = listener
            self.session.barge_in = listener.barge_in
        except AudioError as error:
            self.emit(StageFailed(stage="microphone", message=f"{error}; type your questions instead"))

    def _turn(self, question: TurnInput) -> None:
        try:
            result = self.session.run_turn(question)
            if self.player is not None and not result.finished.interrupted:
                self.player.wait(WAIT_FOR_PLAYBACK_S)
        except Exception as error:  # noqa: BLE001 - a bug in one turn must not end the conversation
            log.exception("turn failed")
            self.emit(StageFailed(stage="turn", message=f"{type(error).__name__}: {error}"))
        finally:
            self.session.turn_over()
