"""What the conversation engine tells its drivers (the TUI, `voicechat ask`, the evaluation).

Every event carries a monotonic timestamp ``t``; the per-turn timings are derived from the events
of that turn (``TurnTimings.from_events``), never measured a second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Event:
    t: float = field(default_factory=time.monotonic, kw_only=True)


@dataclass(frozen=True)
class Source:
    """One retrieved passage as the user sees it."""

    rank: int
    score: float
    file: str
    heading: str
    lines: tuple[int, int]
    text: str
    injected: bool


@dataclass(frozen=True)
class DeviceChoice:
    """A microphone the user can switch to."""

    index: int
    name: str
    is_default: bool


@dataclass(frozen=True)
class LoadProgress(Event):
    step: str
    done: int
    total: int


@dataclass(frozen=True)
class StateChanged(Event):
    """The conversation's turn-taking state moved (see voicechat.session for the states)."""

    old: str
    new: str
    why: str = ""


@dataclass(frozen=True)
class SettingsChanged(Event):
    """What is in effect now; ``loading`` names retrieval modes whose models are on their way."""

    rag: str
    two_round: str
    voice: str
    loading: tuple[str, ...] = ()
    muted: bool = False


@dataclass(frozen=True)
class Notice(Event):
    """One line for the user that is not a failure of a stage (a refused switch, a saved file)."""

    text: str
    error: bool = False


@dataclass(frozen=True)
class MicLevel(Event):
    level: float  # 0..1, high rate: drivers coalesce it
    turn_probability: float | None = None  # the end-of-turn model's answer in this utterance, if any


@dataclass(frozen=True)
class TurnStarted(Event):
    turn: int
    question: str | None  # typed text, or None for speech
    audio: np.ndarray | None = field(repr=False)  # the utterance at MODEL_RATE, for speech
    speech_end_t: float | None  # when the user stopped speaking (endpointer's estimate)
    mode: str
    voice: str


@dataclass(frozen=True)
class TurnConfirmed(Event):
    """A turn started in the user's pause (before the end of the question was decided) was
    confirmed at ``t``: what it had held back was shown and played from then."""

    audio_ready: float | None = None  # when its first audio was ready, if it waited for the confirmation


@dataclass(frozen=True)
class SpeechTokenized(Event):
    started: float
    count: int


@dataclass(frozen=True)
class Retrieved(Event):
    started: float
    mode: str
    round: int
    sources: tuple[Source, ...]
    query: str | None = None  # the text searched for (asr transcript, rewrite), if any
    stage_ms: dict[str, float] = field(default_factory=dict)  # e.g. asr, embed, search


@dataclass(frozen=True)
class RoundStarted(Event):
    """A reply round begins (a turn has two in the fallback mode); ``mode``: its retrieval."""

    round: int
    mode: str


@dataclass(frozen=True)
class RoundDiscarded(Event):
    """The round's reply was dropped before any of its audio played; another round follows."""

    round: int
    why: str


@dataclass(frozen=True)
class PromptReady(Event):
    tokens: int


@dataclass(frozen=True)
class TextDelta(Event):
    text: str


@dataclass(frozen=True)
class SpeechTokens(Event):
    count: int


@dataclass(frozen=True)
class AudioChunk(Event):
    samples: np.ndarray = field(repr=False)
    rate: int


@dataclass(frozen=True)
class StageFailed(Event):
    stage: str
    message: str


@dataclass(frozen=True)
class AudioWarnings(Event):
    """Lines that C libraries (alsa-lib, JACK, PortAudio) wrote to stderr, kept in a log file."""

    count: int  # so far in this conversation
    latest: str


@dataclass(frozen=True)
class TurnTimings:
    """Milliseconds from the end of the user's speech, except the stage durations.

    A turn started in the pause (preemptive) is confirmed later than it started: ``endpoint`` is
    the confirmation, ``preemptive_ms`` the work done before it on the way to the first audio
    (what was saved), and held audio reaches the speaker at the confirmation."""

    endpoint_delay_ms: float | None = None  # when the question was confirmed
    preemptive_ms: float | None = None  # duration: work done before the confirmation (held turns)
    confirmed_to_audio_ms: float | None = None  # duration: confirmation -> first audio to the speaker
    confirmed_to_heard_ms: float | None = None  # duration: confirmation -> first audio at the device
    tokenize_ms: float | None = None
    retrieve_ms: float | None = None
    embed_ms: float | None = None  # within retrieve_ms: the question's embedding (after ASR in asr mode)
    search_ms: float | None = None  # within retrieve_ms: the index search
    prompt_tokens: int | None = None
    first_token_ms: float | None = None
    first_text_ms: float | None = None
    first_speech_token_ms: float | None = None
    first_audio_ms: float | None = None  # the first reply audio handed to the speaker
    first_heard_ms: float | None = None  # ... reaching the output device (a live speaker only)
    total_ms: float | None = None
    network_ms: float | None = None  # a remote engine: the question's way there and the first audio's back
    underruns: int = 0

    @classmethod
    def from_events(cls, events: Iterable[Event], end_t: float, underruns: int = 0,
                    first_heard_at: float | None = None) -> TurnTimings:
        """``first_heard_at``: the speaker's clock reading for the reply's first sample at the
        device; one from before this turn started belongs to an earlier reply and is ignored."""
        events = list(events)
        start = next((e for e in events if isinstance(e, TurnStarted)), None)
        if start is None:
            return cls(underruns=underruns)
        zero = start.speech_end_t if start.speech_end_t is not None else start.t
        held = next((e for e in events if isinstance(e, TurnConfirmed)), None)
        confirmed = held.t if held else start.t
        heard = first_heard_at if first_heard_at is not None and first_heard_at >= confirmed else None
        ready = held.audio_ready if held else None  # held audio reaches the speaker at the confirmation
        audio = confirmed if ready is not None else next((e.t for e in events if isinstance(e, AudioChunk)), None)

        def since(kind: type[Event]) -> float | None:
            first = next((e for e in events if isinstance(e, kind)), None)
            return None if first is None else (first.t - zero) * 1000

        def duration(kind: type[Event]) -> float | None:
            first = next((e for e in events if isinstance(e, kind)), None)
            return None if first is None else (first.t - first.started) * 1000  # type: ignore[attr-defined]

        retrieved = next((e for e in events if isinstance(e, Retrieved)), None)
        stages = retrieved.stage_ms if retrieved else {}
        first_token = min((e.t for e in events if isinstance(e, (TextDelta, SpeechTokens))), default=None)
        prompt = next((e for e in events if isinstance(e, PromptReady)), None)
        return cls(
            endpoint_delay_ms=(confirmed - zero) * 1000 if start.speech_end_t is not None else None,
            preemptive_ms=max(0.0, min(confirmed, ready or confirmed) - start.t) * 1000 if held else None,
            confirmed_to_audio_ms=None if audio is None else (audio - confirmed) * 1000,
            confirmed_to_heard_ms=None if heard is None else (heard - confirmed) * 1000,
            tokenize_ms=duration(SpeechTokenized),
            retrieve_ms=duration(Retrieved),
            embed_ms=stages.get("embed"),
            search_ms=stages.get("search"),
            prompt_tokens=prompt.tokens if prompt else None,
            first_token_ms=None if first_token is None else (first_token - zero) * 1000,
            first_text_ms=since(TextDelta),
            first_speech_token_ms=since(SpeechTokens),
            first_audio_ms=None if audio is None else (audio - zero) * 1000,
            first_heard_ms=None if heard is None else (heard - zero) * 1000,
            total_ms=(end_t - zero) * 1000,
            underruns=underruns,
        )


@dataclass(frozen=True)
class TurnFinished(Event):
    turn: int
    reply_text: str
    interrupted: bool
    timings: TurnTimings
