"""The conversation's one owner of state: settings, turn-taking, loaded retrieval modes, history
and the session log.

Turn-taking states (the user's side and the assistant's, one at a time):

- ``loading``: models are loading; ``error``: they could not be loaded (the conversation cannot run);
- ``listening``: waiting for the user; ``muted``: the microphone is ignored;
- ``hearing``: the user is speaking (or holding push-to-talk);
- ``pausing``: the user paused inside an utterance that may go on; with ``audio.preemptive`` the
  reply is prepared meanwhile, held back (see voicechat.hold): it is released the moment the end
  of the question is confirmed on the same audio, and dropped without a trace if the user goes on;
- ``thinking``: a question is being answered, nothing is playing yet;
- ``speaking``: the reply is playing; ``interrupted``: the user cut it short.

Every move is a ``StateChanged`` event; a move that ``TRANSITIONS`` does not allow is a bug and
raises ``IllegalTransition``. The drivers (the TUI through voicechat.live, ``voicechat ask``, the
evaluation runner) call the session's methods and render its events; they keep no state of their own.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from voicechat.audio.events import (
    AudioEvent, DeviceFailed, Interrupted, Level, Paused, Resumed, SpeechStarted, UtteranceDiscarded, UtteranceEnded,
)
from voicechat.assemble import retrieval_modes
from voicechat.audio.resample import MODEL_RATE, as_float32
from voicechat.config import Config
from voicechat.engine import Components, Engine, EngineConfig, Settings, Speaker, TurnInput, TurnResult
from voicechat.errors import VoicechatError
from voicechat.events import (
    AudioChunk, Event, MicLevel, Notice, SettingsChanged, StageFailed, StateChanged,
)
from voicechat.glm.prompt import Conversation
from voicechat.hold import Hold
from voicechat.sessions import SessionLog, TurnRecord, open_session_log

TRANSITIONS: dict[str, frozenset[str]] = {
    "loading": frozenset({"listening", "muted", "error"}),
    "listening": frozenset({"hearing", "thinking", "muted"}),
    "hearing": frozenset({"listening", "thinking", "muted", "pausing"}),
    "pausing": frozenset({"hearing", "listening", "thinking", "muted"}),
    "thinking": frozenset({"speaking", "interrupted", "listening", "hearing", "muted"}),
    "speaking": frozenset({"interrupted", "listening", "hearing", "muted", "thinking"}),
    "interrupted": frozenset({"hearing", "listening", "muted", "thinking"}),
    "muted": frozenset({"listening", "thinking"}),
    "error": frozenset(),
}
BUSY = frozenset({"thinking", "speaking", "interrupted"})
RAG_MODES = ("e2e", "asr", "off")
TWO_ROUND_MODES = ("off", "rewrite", "fallback")
SILENT_DBFS = -60.0  # the bottom of the level meter
LEVEL_STEP = 0.05  # the meter moves in these steps; smaller changes are not sent


class IllegalTransition(RuntimeError):
    """A move between turn-taking states that the table does not allow: a bug."""


class ConversationSession:
    """``emit`` receives every event (from the caller's threads, the turn's and the loader's).
    The session starts ``loading``; ``ready`` gives it the loaded models, ``failed`` says why
    there are none."""

    def __init__(self, config: Config, emit: Callable[[Event], None], *, save: bool = True,
                 settings: Settings | None = None) -> None:
        self.config = config
        self.emit = emit
        self.parts: Components | None = None
        self.engine: Engine | None = None
        self.load_modes: Callable[[set[str]], None] | None = None
        self.settings = settings or Settings.from_config(config)
        self.save = save and config.sessions.save
        self.state = "loading"
        self.failure: str | None = None  # why the conversation could not start
        self.muted = False
        self.preemptive = config.audio.preemptive  # prepare the reply in the user's pauses
        self.loading: set[str] = set()  # retrieval modes on their way
        self.history = Conversation()  # what the model sees again
        self.transcript: list[tuple[str, str, bool]] = []  # (question, reply, interrupted)
        self.log: SessionLog | None = None
        self.questions: queue.Queue[TurnInput | None] = queue.Queue()
        self._lock = threading.RLock()
        self._user_speaking = False
        self._talking = False  # push-to-talk held
        self._talk_heard = False  # speech was detected while it was held
        self._level = -1.0
        self._turn_probability: float | None = None
        self._prepared: tuple[Paused, TurnInput] | None = None  # the reply prepared in the user's pause
        # speech interrupts a reply in progress; the driver sets it once it knows whether echo is cancelled
        self.barge_in = config.audio.barge_in is True

    # --- turn-taking ------------------------------------------------------------------------------

    def move(self, new: str, why: str = "") -> None:
        with self._lock:
            old = self.state
            if new == old:
                return
            if new not in TRANSITIONS[old]:
                raise IllegalTransition(f"{old} -> {new} ({why})")
            self.state = new
            self.emit(StateChanged(old=old, new=new, why=why))

    def ready(self, parts: Components | None, speaker: Speaker | None = None,
              load_modes: Callable[[set[str]], None] | None = None,
              engine: Callable[[Callable[[Event], None]], Engine] | None = None) -> None:
        """The models are loaded. ``load_modes(modes)`` loads retrieval modes into ``parts`` on
        demand; without it, a switch to a mode that is not loaded is refused. ``engine(emit)``
        makes the engine instead of one on ``parts`` (a remote engine, voicechat.remote.client:
        then ``parts`` is None, and the engine says which modes are loaded)."""
        self.parts = parts
        self.engine = engine(self._from_engine) if engine is not None else \
            Engine(EngineConfig.from_config(self.config), parts, self._from_engine, speaker)
        self.load_modes = load_modes
        self.move("muted" if self.muted else "listening", "ready")
        self._announce_settings()

    def failed(self, message: str) -> None:
        """The models could not be loaded: the conversation cannot run."""
        self.failure = message
        self.emit(StageFailed(stage="loading", message=message))
        self.move("error", message)

    def _usable(self) -> bool:
        if self.state == "loading":
            waiting = "waiting for the engine server" if self.config.engine.url else "the models are still loading"
            self.emit(Notice(f"not ready yet: {waiting}", error=True))
        elif self.state == "error":
            self.emit(Notice("the conversation could not start; press q to quit", error=True))
        return self.state not in ("loading", "error")

    def _resting(self) -> str:
        if self.muted:
            return "muted"
        return "hearing" if self._user_speaking or self._talking else "listening"

    @property
    def talking(self) -> bool:
        """Push-to-talk is held."""
        return self._talking

    @property
    def busy(self) -> bool:
        return self.state in BUSY

    # --- turns ------------------------------------------------------------------------------------

    def ask(self, question: TurnInput, why: str = "typed question") -> None:
        """Queue a question; it is answered after the ones before it."""
        with self._lock:
            if not self._usable():
                return
            self.questions.put(question)
            if not self.busy:
                self.move("thinking", why)

    def next_question(self) -> TurnInput | None:
        """The next queued question (waits for one); None once the conversation is closed."""
        return self.questions.get()

    def close(self) -> None:
        with self._lock:
            self._drop_prepared()
        self.questions.put(None)
        if self.engine is not None:
            self.engine.interrupt()

    def run_turn(self, question: TurnInput) -> TurnResult:
        """Answers one question on the calling thread and remembers it. Call ``turn_over`` when
        its audio has played (at once without a speaker). A question prepared in a pause is held
        until confirmed; when it is dropped instead, nothing of it is remembered."""
        settings = self.settings
        if question.hold is None:
            self.move("thinking", "typed question" if question.text is not None else "spoken question")
        result = self.engine.run_turn(question, settings, self.history)
        if question.hold is not None and not question.hold.released:
            return result
        if result.prompt is not None:
            self.history.add(result.prompt, result.heard_ids)
        finished = result.finished
        asked = question.text if question.text is not None else f"(spoken, {len(question.audio) / MODEL_RATE:.1f} s)"
        self.transcript.append((asked, finished.reply_text, finished.interrupted))
        self._log_turn(question, settings, result)
        return result

    def turn_over(self, why: str = "reply finished") -> None:
        with self._lock:
            if not self.busy:
                return
            if not self.questions.empty():
                self.move("thinking", "next question")
            else:
                self.move(self._resting(), why)

    def _from_engine(self, event: Event) -> None:
        if isinstance(event, AudioChunk):
            with self._lock:
                if self.state == "thinking":
                    self.move("speaking", "first audio")
        self.emit(event)

    def interrupt(self, by: str = "key") -> None:
        """Cut the reply short (the engine flushes the speaker)."""
        with self._lock:
            if self.engine is None:
                return
            self._drop_prepared()
            self.engine.interrupt()
            if self.busy:
                self.move("interrupted", f"by {by}")

    def reset_history(self) -> None:
        self.history.clear()

    # --- the microphone ---------------------------------------------------------------------------

    def on_audio(self, event: AudioEvent) -> None:
        """An event from the listener (on its thread)."""
        if isinstance(event, Level):
            self._show_level(event.dbfs, event.turn_probability)
        elif isinstance(event, DeviceFailed):
            self.emit(StageFailed(stage="microphone", message=event.message))
        elif isinstance(event, Interrupted):
            self.interrupt(by=event.by)
        else:
            with self._lock:
                if not self.muted and self.state not in ("loading", "error"):
                    self._speech_event(event)

    def _speech_event(self, event: AudioEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._drop_prepared()  # an utterance that never ended (the microphone went deaf)
            self._user_speaking = True
            self._talk_heard = self._talk_heard or self._talking
            if self.busy and self.barge_in:
                self.interrupt(by="speech")
            if self.state in ("listening", "interrupted"):
                self.move("hearing", "speech")
            return
        if self._talking:
            self._user_speaking = isinstance(event, (Paused, Resumed))
            return  # push-to-talk keeps the whole recording instead
        if isinstance(event, Paused):
            if self.state == "hearing":
                self.move("pausing", "pause")
            self._prepare(event)
        elif isinstance(event, Resumed):
            self._drop_prepared()
            if self.state == "pausing":
                self.move("hearing", "speech again")
        elif isinstance(event, UtteranceDiscarded):
            self._user_speaking = False
            self._drop_prepared()
            if self.state in ("hearing", "pausing"):
                self.move("listening", "too short to be a question")
        elif isinstance(event, UtteranceEnded):
            self._user_speaking = False
            self._confirm(event)

    # --- the reply prepared in a pause ------------------------------------------------------------

    def _prepare(self, paused: Paused) -> None:
        """Starts the turn on the utterance so far, held back; only while nothing else is answered
        (one turn runs at a time)."""
        if not self.preemptive or self.busy or self._prepared is not None:
            return
        question = TurnInput(audio=as_float32(paused.audio), speech_end_t=paused.end, hold=Hold())
        self._prepared = (paused, question)
        self.questions.put(question)

    def _confirm(self, ended: UtteranceEnded) -> None:
        """The end of the question is decided: the prepared reply plays if it was prepared on this
        very audio; otherwise it is dropped and the whole utterance is asked."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            paused, question = prepared
            if question.hold.pending and np.array_equal(paused.audio, ended.audio):
                self.move("thinking", "end of the question")
                question.hold.release()
                return
            question.hold.drop()
        self.ask(TurnInput(audio=as_float32(ended.audio), speech_end_t=ended.end), "end of the question")

    def _drop_prepared(self) -> None:
        if self._prepared is not None:
            self._prepared[1].hold.drop()  # the turn working on it stops
            self._prepared = None

    def _show_level(self, dbfs: float, turn_probability: float | None = None) -> None:
        level = 0.0 if self.muted else min(1.0, max(0.0, 1 - dbfs / SILENT_DBFS))
        level = round(level / LEVEL_STEP) * LEVEL_STEP
        if turn_probability is not None:
            turn_probability = round(turn_probability, 2)
        if (level, turn_probability) != (self._level, self._turn_probability):
            self._level, self._turn_probability = level, turn_probability
            self.emit(MicLevel(level=level, turn_probability=turn_probability))

    def set_muted(self, muted: bool) -> None:
        with self._lock:
            if muted == self.muted:
                return
            self.muted = muted
            if self.state in ("loading", "error"):
                return
            self._user_speaking = False
            self._drop_prepared()
            if not self.busy:
                self.move(self._resting(), "muted" if muted else "unmuted")
            self._announce_settings()

    def press_to_talk(self) -> bool:
        """Push-to-talk pressed: True when recording may start (a reply in progress is cut)."""
        with self._lock:
            if not self._usable():
                return False
            if self.muted:
                self.emit(Notice("the microphone is muted: press m to unmute, then hold to talk"))
                return False
            if self.busy:
                self.interrupt(by="push-to-talk")
            self._drop_prepared()
            self._talking, self._talk_heard = True, False
            self.move("hearing", "push-to-talk")
            return True

    def release_to_talk(self, recording: np.ndarray | None) -> None:
        """Push-to-talk released with what the microphone recorded meanwhile."""
        with self._lock:
            if not self._talking:
                return
            self._talking = False
            if not (self._talk_heard and recording is not None and recording.size > 0):
                self.move(self._resting(), "nothing was said")
                self.emit(Notice("nothing was said"))
                return
            self.ask(TurnInput(audio=as_float32(recording)), "push-to-talk released")

    # --- settings ---------------------------------------------------------------------------------

    @property
    def loaded_modes(self) -> frozenset[str]:
        if self.parts is None:
            return getattr(self.engine, "modes", frozenset())  # a remote engine's
        retriever = self.parts.retriever
        return retriever.modes if retriever is not None else frozenset()

    def toggle_muted(self) -> None:
        self.set_muted(not self.muted)

    def cycle_rag(self) -> None:
        self.set_rag(_next(RAG_MODES, self.settings.rag))

    def cycle_two_round(self) -> None:
        self.set_two_round(_next(TWO_ROUND_MODES, self.settings.two_round))

    def cycle_voice(self) -> None:
        self.set_voice(_next(list(self.config.model_voices), self.settings.voice))

    def set_rag(self, mode: str) -> None:
        self._switch(replace(self.settings, rag=mode), f"retrieval {mode}")

    def set_two_round(self, mode: str) -> None:
        self._switch(replace(self.settings, two_round=mode), f"two-round {mode}")

    def set_voice(self, name: str) -> None:
        if name not in self.config.model_voices:
            self.emit(Notice(f"unknown voice {name!r}; choose one of: {', '.join(self.config.model_voices)}", error=True))
            return
        self._switch(replace(self.settings, voice=name), f"voice {name}")
        if self.settings.voice == name:
            self.emit(Notice(f"voice {name}: {self.config.voices[name].description}"))

    def _switch(self, wanted: Settings, what: str) -> None:
        with self._lock:
            if not self._usable():
                return
            if hasattr(self.engine, "change_settings"):  # a remote engine: its server decides
                threading.Thread(target=self._switch_on_engine, args=(wanted, what),
                                 name="voicechat-settings", daemon=True).start()
                return
            missing = retrieval_modes(wanted.rag, wanted.two_round) - self.loaded_modes
            if not missing:
                self.settings = wanted
                self._announce_settings()
                return
            if self.loading:
                self.emit(Notice(f"cannot switch to {what} yet: still loading {', '.join(sorted(self.loading))}",
                                 error=True))
                return
            if self.load_modes is None:
                self.emit(Notice(f"cannot switch to {what}: its models ({', '.join(sorted(missing))}) "
                                 "are not loaded", error=True))
                return
            self.loading = set(missing)
            self._announce_settings()
        threading.Thread(target=self._load_then_switch, args=(wanted, missing, what),
                         name="voicechat-mode-loader", daemon=True).start()

    def _switch_on_engine(self, wanted: Settings, what: str) -> None:
        refusal = self.engine.change_settings(wanted)
        with self._lock:
            if refusal is None:
                new_voice = wanted.voice != self.settings.voice
                self.settings = wanted
                if new_voice:
                    self.emit(Notice(f"voice {wanted.voice}: {self.config.voices[wanted.voice].description}"))
            else:
                self.emit(Notice(f"cannot switch to {what}: {refusal}", error=True))
            self._announce_settings()

    def _load_then_switch(self, wanted: Settings, missing: set[str], what: str) -> None:
        try:
            self.load_modes(missing)
        except VoicechatError as error:
            with self._lock:
                self.loading = set()
                self.emit(Notice(f"cannot switch to {what}: {error}", error=True))
                self._announce_settings()
            return
        with self._lock:
            self.loading = set()
            self.settings = wanted
            self._announce_settings()

    def _announce_settings(self) -> None:
        s = self.settings
        self.emit(SettingsChanged(rag=s.rag, two_round=s.two_round, voice=s.voice,
                                  loading=tuple(sorted(self.loading)), muted=self.muted))

    # --- transcript and session log ---------------------------------------------------------------

    def transcript_text(self) -> str:
        lines = [f"# voicechat conversation, {dt.datetime.now():%Y-%m-%d %H:%M}\n"]
        for question, reply, interrupted in self.transcript:
            lines.append(f"**You:** {question}\n")
            lines.append(f"**Assistant:** {reply}{' *(interrupted)*' if interrupted else ''}\n")
        return "\n".join(lines)

    def save_transcript(self) -> Path:
        """Writes the transcript into the session's folder (made now if no turn made it yet)."""
        log = self._session_log()
        path = log.folder / "transcript.md"
        try:
            path.write_text(self.transcript_text(), encoding="utf-8")
        except OSError as error:
            raise VoicechatError(f"could not save the transcript to {path}: {error.strerror}") from None
        return path

    def _session_log(self) -> SessionLog:
        if self.log is None:
            self.log = open_session_log(self.config)
        return self.log

    def _log_turn(self, question: TurnInput, settings: Settings, result: TurnResult) -> None:
        if not self.save:
            return
        finished = result.finished
        record = TurnRecord(
            turn=finished.turn, time=dt.datetime.now().isoformat(timespec="seconds"), mode=settings.rag,
            two_round=settings.two_round, voice=settings.voice, question=question.text,
            reply_text=finished.reply_text, interrupted=finished.interrupted, sources=list(result.sources),
            timings=finished.timings,
        )
        try:
            rate = self.parts.decoder.sample_rate if self.parts is not None else self.engine.sample_rate
            self._session_log().append(record, question.audio, MODEL_RATE, result.reply_audio, rate)
        except VoicechatError as error:
            self.emit(StageFailed(stage="session log", message=str(error)))



def _next(choices, current: str) -> str:
    choices = list(choices)
    return choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]
