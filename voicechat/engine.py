"""One conversation: the pipeline of a turn, from the user's utterance to the reply's audio.

For each question the engine tokenises the speech and retrieves passages concurrently, builds the
prompt, streams the model's reply, shows its text as it comes and decodes its speech tokens chunk
by chunk into the speaker. It reports everything as events (voicechat.events) and knows nothing
about the UI: the TUI, `voicechat ask` and the evaluation harness drive it alike. A turn may be
held (voicechat.hold): started in the user's pause, shown and played only once confirmed.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.cancellation import Cancelled
from voicechat.config import Config, DecoderConfig, GenerationConfig, VoicePreset
from voicechat.errors import VoicechatError
from voicechat.events import (
    AudioChunk, Event, PromptReady, Retrieved, RoundDiscarded, RoundStarted, Source, SpeechTokenized, SpeechTokens,
    StageFailed, TextDelta, TurnConfirmed, TurnFinished, TurnStarted, TurnTimings,
)
from voicechat.glm.demux import ReplyEnded, ReplyFailed, ReplySpeech, ReplyText, demux
from voicechat.glm.lm import LMBackend, SamplingParams
from voicechat.glm.prompt import FALLBACK_INSTRUCTION, Conversation, Passage, Prompt, PromptBuilder, needs_fallback
from voicechat.glm.text_tokenizer import GlmTextTokenizer
from voicechat.hold import HeldSpeaker, Hold, run_or_hold
from voicechat.worker import Worker

TOKENS_PER_SECOND = 12.5  # GLM-4-Voice's speech tokens per second of reply audio (a decoder may say otherwise)
REWRITE_INSTRUCTION = (
    "Do not answer yet. In one short sentence, state what information is needed to answer this question."
)


class SpeechTokenizer(Protocol):
    def tokenize(self, samples: np.ndarray, rate: int, cancel: threading.Event | None = None) -> list[int]:
        """Raises voicechat.cancellation.Cancelled once ``cancel`` is set."""


class DecoderSession(Protocol):
    def push(self, tokens: list[int]) -> np.ndarray: ...
    def finish(self) -> np.ndarray: ...
    def cancel(self) -> None: ...


class SpeechDecoder(Protocol):
    sample_rate: int

    def session(self, config, cancel: threading.Event | None = None) -> DecoderSession: ...


class Speaker(Protocol):
    """Where reply audio goes: the player, or a collector when there is no device."""

    def begin(self) -> None: ...
    def push(self, audio: np.ndarray) -> bool: ...
    def end(self) -> None: ...
    def flush(self) -> None: ...

    @property
    def played_s(self) -> float: ...

    @property
    def underruns(self) -> int: ...

    @property
    def first_audio_at(self) -> float | None:
        """Monotonic time the reply's first sample reaches the device; None without one."""


class Retrieval(Protocol):
    """What one retrieval found, and how long its stages took (seconds)."""

    @property
    def sources(self) -> tuple[Source, ...]: ...

    mode: str  # e2e, asr or text
    query_text: str | None
    timings: dict[str, float]


class Retriever(Protocol):
    @property
    def modes(self) -> frozenset[str]:
        """The retrieval modes whose models are loaded ("e2e", "asr", "text")."""

    def retrieve(self, mode: str, *, samples: np.ndarray | None = None, rate: int | None = None,
                 question: str | None = None, cancel: threading.Event | None = None) -> Retrieval:
        """Raises voicechat.cancellation.Cancelled once ``cancel`` is set."""
    def rewrite(self, first: Retrieval, need: str) -> Retrieval: ...


@dataclass
class Components:
    """Everything a conversation runs on, loaded once (see voicechat.assemble)."""

    text_tokenizer: GlmTextTokenizer
    prompts: PromptBuilder
    backend: LMBackend
    speech_tokenizer: SpeechTokenizer
    decoder: SpeechDecoder
    retriever: Retriever | None = None

    def close(self) -> None:
        self.backend.close()


@dataclass(frozen=True)
class EngineConfig:
    """The part of the configuration a turn reads."""

    generation: GenerationConfig
    decoder: DecoderConfig
    voices: dict[str, VoicePreset]

    @classmethod
    def from_config(cls, config: Config) -> EngineConfig:
        return cls(config.generation, config.decoder, config.voices)

    def voice_preset(self, name: str) -> VoicePreset:
        return self.voices[name]


@dataclass(frozen=True)
class Settings:
    """What the user can switch while talking; a turn runs with the settings it started with."""

    rag: str
    two_round: str
    voice: str

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        return cls(config.retrieval.rag, config.retrieval.two_round, config.voice)


@dataclass
class TurnInput:
    audio: np.ndarray | None = None  # MODEL_RATE mono float32
    text: str | None = None
    speech_end_t: float | None = None  # when the user stopped speaking (endpointer's estimate)
    hold: Hold | None = None  # started before the question was confirmed: shown and played once released


@dataclass
class TurnResult:
    finished: TurnFinished
    sources: tuple[Source, ...]
    reply_audio: np.ndarray
    events: list[Event] = field(default_factory=list)
    prompt: Prompt | None = None  # the final round's prompt; None when the turn failed before it
    heard_ids: list[int] = field(default_factory=list)  # the reply as the user heard it


class CollectingSpeaker:
    """A speaker without a device: keeps the reply audio (for `voicechat ask` and evaluation)."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.underruns = 0
        self.first_audio_at = None  # no device

    def begin(self) -> None:
        self.pieces = []

    def push(self, audio: np.ndarray) -> bool:
        self.pieces.append(audio)
        return True

    def end(self) -> None:
        pass

    def flush(self) -> None:
        pass

    @property
    def played_s(self) -> float:
        return float("inf")  # nothing is cut: all of it counts as heard

    def audio(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)


class Engine:
    """Runs turns on loaded components; the conversation's state (settings, history) is the
    caller's (voicechat.session) and comes in with each turn."""

    def __init__(self, config: EngineConfig, parts: Components, emit: Callable[[Event], None],
                 speaker: Speaker | None = None) -> None:
        self.config = config
        self.parts = parts
        self.emit_to_driver = emit
        self.speaker = speaker or CollectingSpeaker()
        self.turns = 0
        self.cancel = threading.Event()  # the user interrupted the current turn
        self._linked: set[threading.Event] = set()
        self._lock = threading.Lock()

    # --- one turn ---------------------------------------------------------------------------------

    def run_turn(self, question: TurnInput, settings: Settings, history: Conversation) -> TurnResult:
        """Runs a whole turn on the calling thread; interrupt() from any thread cuts it short.
        ``history`` is read, not changed: the caller adds the result's prompt and heard reply.
        A held turn (``question.hold``) that is dropped leaves nothing, not even its number."""
        self.cancel.clear()
        hold = question.hold
        if hold is not None:
            hold.on_drop(self.stop_turn)
        number = self.turns + 1
        result = _Turn(self, number, question, settings, history).run()
        if hold is None or hold.released:
            self.turns = number
        return result

    def interrupt(self) -> None:
        self.stop_turn()
        self.speaker.flush()

    def stop_turn(self) -> None:
        """Cancels the turn's stages (interrupt() also cuts what is playing)."""
        with self._lock:
            self.cancel.set()
            for event in self._linked:
                event.set()

    def linked_cancel(self) -> threading.Event:
        """A cancel event of one stage: set by interrupt(), and settable by the stage alone."""
        event = threading.Event()
        with self._lock:
            self._linked.add(event)
            if self.cancel.is_set():
                event.set()
        return event

    def unlink(self, event: threading.Event) -> None:
        with self._lock:
            self._linked.discard(event)


class _Turn:
    """The state of one turn; its methods are the stages."""

    def __init__(self, engine: Engine, number: int, question: TurnInput, settings: Settings,
                 history: Conversation) -> None:
        self.engine = engine
        self.parts = engine.parts
        self.config = engine.config
        self.settings = settings
        self.history = history
        self.number = number
        self.question = question
        self.hold = question.hold
        self.speaker = engine.speaker if self.hold is None else HeldSpeaker(engine.speaker, self.hold)
        self.events: list[Event] = []
        self.sources: tuple[Source, ...] = ()
        self.reply_text = ""
        self.reply_ids: list[int] = []
        self.audio: list[np.ndarray] = []
        self.failed = False

    def emit(self, event: Event) -> None:
        self.events.append(event)
        run_or_hold(self.hold, lambda: self.engine.emit_to_driver(event))

    def run(self) -> TurnResult:
        q = self.question
        self.emit(TurnStarted(turn=self.number, question=q.text, audio=q.audio, speech_end_t=q.speech_end_t,
                              mode=self.settings.rag, voice=self.settings.voice))
        speech_tokens, retrieval = self.understand()
        prompt = None
        if not self.failed and not self.engine.cancel.is_set():
            if self.settings.two_round == "rewrite" and retrieval is not None:
                retrieval = self.rewrite(speech_tokens, retrieval)
            prompt, outcome = self.answer(speech_tokens, retrieval, round_number=1)
            if outcome == "fallback":
                self.emit(RoundDiscarded(round=1, why="the passages did not hold the answer; "
                                                      "retrying with ASR retrieval"))
                retrieval = self.retrieve("asr", 2, self.engine.cancel)
                prompt, outcome = self.answer(speech_tokens, retrieval, round_number=2)
        if self.hold is not None and self.hold.wait():  # a held turn ends once decided
            self.emit(TurnConfirmed(t=self.hold.confirmed_at, audio_ready=self.hold.audio_ready_at))
        interrupted = self.engine.cancel.is_set()
        keep = prompt is not None and not self.failed
        end_t = time.monotonic()
        speaker = self.speaker
        timings = TurnTimings.from_events(self.events, end_t=end_t, underruns=speaker.underruns,
                                          first_heard_at=speaker.first_audio_at)
        finished = TurnFinished(turn=self.number, reply_text=self.reply_text, interrupted=interrupted,
                                timings=timings, t=end_t)
        self.emit(finished)
        audio = np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)
        return TurnResult(finished, self.sources, audio, self.events, prompt if keep else None,
                          self.heard_reply_ids(interrupted) if keep else [])

    # --- understanding the question: speech tokens and retrieval, concurrently ------------------

    def understand(self):
        """The speech tokenizer runs on a worker thread while retrieval runs on this one, where a
        Ctrl-C lands at once. Both stop at their next cancellation point when the turn is
        interrupted; a Ctrl-C here stops the tokenizer too and waits for it (one window's layer)."""
        cancel = self.engine.linked_cancel()
        spoken = self.question.audio is not None
        mode = self.settings.rag if spoken else "text"
        found: dict[str, object] = {}

        def tokenize() -> None:
            try:
                found["tokens"] = self.tokenize(cancel)
            except BaseException as error:  # a bug: raised again on the turn's thread
                found["error"] = error

        tokenizer = Worker(tokenize, "voicechat-tokenizer", cancel) if spoken else None
        if tokenizer is not None:
            tokenizer.start()
        try:
            retrieval = self.retrieve(mode, 1, cancel) if self.settings.rag != "off" else None
        except BaseException:
            cancel.set()
            raise
        finally:
            if tokenizer is not None:
                tokenizer.join()
            self.engine.unlink(cancel)
        if "error" in found:
            raise found["error"]
        return found.get("tokens"), retrieval

    def tokenize(self, cancel: threading.Event) -> list[int] | None:
        started = time.monotonic()
        try:
            tokens = self.parts.speech_tokenizer.tokenize(self.question.audio, MODEL_RATE, cancel)
        except Cancelled:
            return None
        except VoicechatError as error:
            return self.fail("speech tokenizer", error)
        self.emit(SpeechTokenized(started=started, count=len(tokens)))
        return tokens

    def retrieve(self, mode: str, round_number: int, cancel: threading.Event) -> Retrieval | None:
        retriever = self.parts.retriever
        if retriever is None:
            return None
        started = time.monotonic()
        try:
            if mode == "text":
                result = retriever.retrieve("text", question=self.question.text)
            else:
                result = retriever.retrieve(mode, samples=self.question.audio, rate=MODEL_RATE, cancel=cancel)
        except Cancelled:
            return None
        except VoicechatError as error:
            return self.fail("retrieval", error, fatal=False)
        self.show_sources(result, mode, round_number, started)
        return result

    def show_sources(self, result: Retrieval, mode: str, round_number: int, started: float) -> None:
        self.sources = result.sources
        stage_ms = {name: seconds * 1000 for name, seconds in result.timings.items()}
        self.emit(Retrieved(started=started, mode=mode, round=round_number, sources=self.sources,
                            query=result.query_text, stage_ms=stage_ms))

    def rewrite(self, speech_tokens: list[int] | None, first):
        """Two-round `rewrite`: the model says what it needs; that text is retrieved too."""
        need = self.generate_text(speech_tokens, REWRITE_INSTRUCTION)
        if not need or self.engine.cancel.is_set():
            return first
        started = time.monotonic()
        try:
            result = self.parts.retriever.rewrite(first, need)
        except VoicechatError as error:
            self.fail("retrieval", error, fatal=False)
            return first
        self.show_sources(result, "rewrite", 2, started)
        return result

    # --- answering ----------------------------------------------------------------------------------

    def build_prompt(self, speech_tokens, retrieval: Retrieval | None, instruction: str) -> Prompt:
        passages = [Passage(source.file, source.text) for source in (retrieval.sources if retrieval else ())]
        return self.parts.prompts.build(
            self.history,
            speech_tokens=speech_tokens if self.question.audio is not None else None,
            text=self.question.text if self.question.audio is None else None,
            passages=passages,
            instruction=instruction,
            max_tokens=self.config.generation.context_budget,
        )

    def sampling(self) -> SamplingParams:
        preset = self.config.voice_preset(self.settings.voice)
        stop = (self.parts.text_tokenizer.special.user,)
        return SamplingParams.from_config(self.config.generation, stop, preset)

    def answer(self, speech_tokens, retrieval: Retrieval | None, round_number: int) -> tuple[Prompt | None, str]:
        """Streams the reply; the outcome is "done", "interrupted" or "fallback" (the reply said
        it lacked information, and was dropped before any of its audio played)."""
        check_lead = (self.settings.two_round == "fallback" and round_number == 1
                      and self.question.audio is not None and retrieval is not None)
        instruction = self.config.voice_preset(self.settings.voice).instruction
        if check_lead:
            instruction = f"{FALLBACK_INSTRUCTION}\n{instruction}".strip()
        try:
            prompt = self.build_prompt(speech_tokens, retrieval, instruction)
        except VoicechatError as error:
            self.fail("prompt", error)
            return None, "done"
        self.emit(RoundStarted(round=round_number, mode=retrieval.mode if retrieval else "off"))
        self.emit(PromptReady(tokens=len(prompt.ids)))
        self.reply_text, self.reply_ids, self.audio = "", [], []
        return prompt, _Reply(self, prompt, check_lead).play()

    def generate_text(self, speech_tokens, instruction: str) -> str:
        """A short text-only generation (the rewrite round); speech tokens are ignored."""
        try:
            prompt = self.build_prompt(speech_tokens, None, instruction)
        except VoicechatError:
            return ""
        params = self.sampling()
        cancel = self.engine.linked_cancel()
        text = ""
        try:
            tokens = self.parts.backend.stream(prompt.ids, params, cancel)
            events = demux(tokens, self.parts.text_tokenizer, params.stop_ids, params.max_new_tokens, cancel)
            with closing_stream(tokens), closing_stream(events):
                for event in events:
                    if isinstance(event, ReplyText):
                        text += event.text
                        if any(mark in text for mark in ".?!。？！\n"):
                            cancel.set()  # one sentence is all we need
                    elif isinstance(event, ReplySpeech) and text:
                        cancel.set()
        finally:
            self.engine.unlink(cancel)
        return text.strip()

    def heard_reply_ids(self, interrupted: bool) -> list[int]:
        """The reply as the user heard it: after an interruption, speech tokens not played yet
        (and the text that came with them) are not part of the conversation."""
        played = self.speaker.played_s
        if not interrupted or played == float("inf"):  # without a device all of it was shown
            return self.reply_ids
        heard = int(played * getattr(self.parts.decoder, "tokens_per_second", TOKENS_PER_SECOND))
        special = self.parts.text_tokenizer.special
        kept, speech = [], 0
        for token in self.reply_ids:
            if special.is_audio(token):
                speech += 1
                if speech > heard:
                    break
            kept.append(token)
        return kept

    def fail(self, stage: str, error: VoicechatError, fatal: bool = True):
        self.emit(StageFailed(stage=stage, message=str(error)))
        self.failed = self.failed or fatal
        return None


class _Reply:
    """Streams one reply: text to the driver, speech tokens to the decoder thread, audio out."""

    def __init__(self, turn: _Turn, prompt: Prompt, check_lead: bool) -> None:
        self.turn = turn
        self.prompt = prompt
        self.check_lead = check_lead  # fallback mode: the leading text decides before any audio
        self.tokens: queue.Queue[list[int] | None] = queue.Queue()
        self.cancel = turn.engine.linked_cancel()

    def play(self) -> str:
        turn = self.turn
        decoder = Worker(self.decode, "voicechat-decoder", self.cancel)
        turn.speaker.begin()
        decoder.start()
        try:
            outcome = self.stream(turn.sampling())
        except BaseException:  # an error or Ctrl-C: the decoder drops what is left instead of decoding it
            self.cancel.set()
            raise
        finally:
            self.tokens.put(None)
            decoder.join()
            turn.engine.unlink(self.cancel)
        return outcome

    def stream(self, params: SamplingParams) -> str:
        turn = self.turn
        tokens = turn.parts.backend.stream(self.prompt.ids, params, self.cancel)
        events = demux(tokens, turn.parts.text_tokenizer, params.stop_ids, params.max_new_tokens, self.cancel)
        with closing_stream(tokens), closing_stream(events):
            for event in events:
                if isinstance(event, ReplyText):
                    turn.reply_text += event.text
                    turn.emit(TextDelta(text=event.text, t=event.t))
                elif isinstance(event, ReplySpeech):
                    if self.check_lead and self.lacks_information():
                        return "fallback"
                    turn.emit(SpeechTokens(count=len(event.tokens), t=event.t))
                    self.tokens.put(list(event.tokens))
                elif isinstance(event, ReplyEnded):
                    turn.reply_ids = list(event.reply_ids)
                    return "interrupted" if event.reason == "cancelled" else "done"
                elif isinstance(event, ReplyFailed):
                    turn.reply_ids = list(event.reply_ids)
                    turn.fail("language model", event.error)
        return "done"

    def lacks_information(self) -> bool:
        """At the first speech token the leading text is known: a reply that says it lacks
        information is dropped (cancelled before any of its audio was decoded)."""
        self.check_lead = False
        if needs_fallback(self.turn.reply_text):
            self.cancel.set()
            return True
        return False

    def decode(self) -> None:
        turn = self.turn
        speaker = turn.speaker
        session = turn.parts.decoder.session(turn.config.decoder, cancel=self.cancel)
        try:
            while (tokens := self.tokens.get()) is not None:
                self.play_audio(session.push(tokens))
            self.play_audio(session.finish())
        except VoicechatError as error:
            session.cancel()
            turn.fail("speech decoder", error, fatal=False)
        finally:
            speaker.end()

    def play_audio(self, audio: np.ndarray) -> None:
        if audio.size == 0 or self.cancel.is_set():
            return
        turn = self.turn
        if turn.speaker.push(audio):
            turn.audio.append(audio)
            turn.emit(AudioChunk(samples=audio, rate=turn.parts.decoder.sample_rate))


@contextmanager
def closing_stream(stream: Iterator) -> Iterator[Iterator]:
    """Closes a token or event stream however the loop over it ends (finished, returned early, an
    error, Ctrl-C), so that the worker behind it stops now rather than when it is garbage."""
    try:
        yield stream
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
