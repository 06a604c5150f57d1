"""A live conversation: microphone and speaker around the engine, one turn at a time.

It loads the models, opens the audio devices, turns each utterance (or typed question) into an
engine turn on its own thread, keeps the session log, and reports everything as events. The TUI
drives it through the few methods of its ConversationControl protocol; it imports no UI code.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from typing import Callable

import numpy as np

from voicechat.audio.events import (
    DeviceFailed, Level, SpeechStarted, UtteranceDiscarded, UtteranceEnded,
)
from voicechat.audio.resample import as_float32
from voicechat.config import Config
from voicechat.engine import CollectingSpeaker, Components, Engine, Settings, TurnInput, TurnResult
from voicechat.errors import AudioError, VoicechatError
from voicechat.events import DeviceChoice, Event, MicLevel, StageFailed, StateChanged
from voicechat.sessions import SessionLog, TurnRecord, open_session_log

log = logging.getLogger(__name__)

SILENT_DBFS = -60.0  # the bottom of the level meter
WAIT_FOR_PLAYBACK_S = 600.0


class LiveConversation:
    def __init__(self, config: Config, save: bool = True,
                 load: Callable[..., Components] | None = None, use_audio: bool = True,
                 session_log: SessionLog | None = None) -> None:
        self.config = config
        self.save = save and config.sessions.save
        self.load = load
        self.use_audio = use_audio
        self.settings = Settings(config.retrieval.rag, config.retrieval.two_round, config.voice)
        self.emit: Callable[[Event], None] = lambda event: None
        self.engine: Engine | None = None
        self.listener = None
        self.player = None
        self.log: SessionLog | None = session_log  # else opened once the models are loaded
        self.questions: queue.Queue[TurnInput | None] = queue.Queue()
        self.busy = threading.Event()
        self.muted = False
        self.talk: list[np.ndarray] | None = None  # push-to-talk: utterances gathered so far
        self.history: list[tuple[str, str, bool]] = []  # (question, reply, interrupted) for transcripts
        self.thread: threading.Thread | None = None

    # --- ConversationControl ----------------------------------------------------------------------

    def start(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.thread = threading.Thread(target=self._run, name="voicechat-conversation", daemon=True)
        self.thread.start()

    def ask_text(self, text: str) -> None:
        self.questions.put(TurnInput(text=text))

    def interrupt(self) -> None:
        if self.listener is not None:
            self.listener.interrupt(by="key")  # flushes the speaker and calls engine.interrupt
        elif self.engine is not None:
            self.engine.interrupt()

    def set_muted(self, muted: bool) -> None:
        self.muted = muted

    def push_to_talk(self, active: bool) -> None:
        """While active, everything said (pauses included) becomes one question at release."""
        if active:
            self.talk = []
            return
        gathered, self.talk = self.talk, None
        if gathered:
            self.questions.put(TurnInput(audio=np.concatenate(gathered)))

    def set_rag(self, mode: str) -> None:
        self.settings.rag = mode

    def set_two_round(self, mode: str) -> None:
        self.settings.two_round = mode

    def set_voice(self, name: str) -> None:
        self.settings.voice = name

    def input_devices(self):
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

    def transcript(self) -> str:
        lines = [f"# voicechat conversation, {dt.datetime.now():%Y-%m-%d %H:%M}\n"]
        for question, reply, interrupted in self.history:
            lines.append(f"**You:** {question}\n")
            lines.append(f"**Assistant:** {reply}{' *(interrupted)*' if interrupted else ''}\n")
        return "\n".join(lines)

    def close(self) -> None:
        self.questions.put(None)
        if self.listener is not None:
            self.listener.stop()
        if self.engine is not None:
            self.engine.interrupt()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)
        if self.player is not None:
            self.player.close()
        if self.engine is not None:
            self.engine.parts.close()

    # --- the conversation thread ------------------------------------------------------------------

    def _run(self) -> None:
        parts = self._load()
        if parts is None:
            return
        self.engine = Engine(self.config, parts, self.emit, self._open_speaker())
        self.engine.settings = self.settings
        self._open_session_log()
        self._open_microphone()
        self._listening()
        while (question := self.questions.get()) is not None:
            self._turn(question)

    def _load(self) -> Components | None:
        from voicechat.assemble import load_components
        from voicechat.events import LoadProgress

        load = self.load or load_components
        try:
            return load(self.config, progress=lambda step, done, total: self.emit(LoadProgress(step, done, total)),
                        on_warning=lambda message: self.emit(StageFailed(stage="retrieval", message=message)))
        except VoicechatError as error:
            self.emit(LoadProgress("failed", 1, 1))
            self.emit(StageFailed(stage="loading", message=str(error)))
            return None

    def _open_speaker(self):
        if not self.use_audio:
            return CollectingSpeaker()
        from voicechat.audio.player import Player

        audio = self.config.audio
        try:
            self.player = Player(audio.output_device, audio.playback).open()
            return self.player
        except AudioError as error:
            self.emit(StageFailed(stage="speaker", message=f"{error}; replies are shown as text only"))
            return CollectingSpeaker()

    def _open_microphone(self) -> None:
        if not self.use_audio:
            return
        from voicechat.audio.listener import Listener

        listener = Listener(self.config.audio, self._on_audio, self.player, on_interrupt=self.engine.interrupt)
        try:
            listener.start()
            self.listener = listener
        except AudioError as error:
            self.emit(StageFailed(stage="microphone", message=f"{error}; type your questions instead"))

    def _open_session_log(self) -> None:
        if not self.save or self.log is not None:
            return
        try:
            self.log = open_session_log(self.config)
        except VoicechatError as error:
            self.emit(StageFailed(stage="session log", message=str(error)))

    def _listening(self) -> None:
        detail = "" if self.listener is not None else "no microphone: press / to type"
        self.emit(StateChanged("muted" if self.muted else "listening", detail))

    def _turn(self, question: TurnInput) -> None:
        self.busy.set()
        try:
            result = self.engine.run_turn(question)
            if self.player is not None and not result.finished.interrupted:
                self.player.wait(WAIT_FOR_PLAYBACK_S)
            self._remember(question, result)
        except Exception as error:  # noqa: BLE001 - a bug in one turn must not end the conversation
            log.exception("turn failed")
            self.emit(StageFailed(stage="turn", message=f"{type(error).__name__}: {error}"))
        finally:
            self.busy.clear()
            self._listening()

    def _remember(self, question: TurnInput, result: TurnResult) -> None:
        finished = result.finished
        asked = question.text if question.text is not None else f"(spoken, {len(question.audio) / 16000:.1f} s)"
        self.history.append((asked, finished.reply_text, finished.interrupted))
        if self.log is None:
            return
        record = TurnRecord(
            turn=finished.turn, time=dt.datetime.now().isoformat(timespec="seconds"), mode=self.settings.rag,
            two_round=self.settings.two_round, voice=self.settings.voice, question=question.text,
            reply_text=finished.reply_text, interrupted=finished.interrupted, sources=list(result.sources),
            timings=finished.timings,
        )
        try:
            self.log.append(record, question.audio, 16000, result.reply_audio, self.engine.parts.decoder.sample_rate)
        except VoicechatError as error:
            self.emit(StageFailed(stage="session log", message=str(error)))

    # --- the listener's thread --------------------------------------------------------------------

    def _on_audio(self, event: object) -> None:
        if isinstance(event, Level):
            self.emit(MicLevel(level=min(1.0, max(0.0, 1 - event.dbfs / SILENT_DBFS))))
        elif self.muted:
            return
        elif isinstance(event, SpeechStarted):
            if self.busy.is_set() and self.config.audio.barge_in and self.engine is not None:
                self.engine.interrupt()  # the reply is still being prepared: cancel it too
            self.emit(StateChanged("hearing"))
        elif isinstance(event, UtteranceEnded):
            self._utterance(event)
        elif isinstance(event, UtteranceDiscarded):
            self._listening()
        elif isinstance(event, DeviceFailed):
            self.emit(StageFailed(stage="microphone", message=event.message))

    def _utterance(self, event: UtteranceEnded) -> None:
        audio = as_float32(event.audio)
        if self.talk is not None:
            self.talk.append(audio)
            return
        if self.busy.is_set() and not self.config.audio.barge_in:
            return  # half-duplex: the user spoke while the assistant was thinking
        self.questions.put(TurnInput(audio=audio, speech_end_t=event.end))
