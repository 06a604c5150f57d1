"""Retrieval for a question: spoken (end to end, or through a transcript) or typed.

- e2e: audio at any rate and channel count -> 16 kHz mono -> SONAR speech encoder -> index.
- asr: audio -> Whisper transcript -> SONAR text encoder -> the same index.
- text: a typed question -> SONAR text encoder -> index.

Hits that share a parent passage are merged (the passage is what goes to the model), and hits
below the score threshold are dropped. For the two-round ``rewrite`` mode, ``rewrite`` embeds the
voice model's one-sentence statement of what it needs and merges its hits with the first round's.
A retrieval hands the conversation engine its passages as ``Source``s.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from voicechat.audio.resample import MODEL_RATE, to_model_input
from voicechat.config import RetrievalConfig
from voicechat.errors import AudioError, ModelError
from voicechat.events import Source
from voicechat.retrieval.chunking import detect_language
from voicechat.retrieval.encoders import SpeechEncoder, TextEncoder
from voicechat.retrieval.index import KnowledgeIndex
from voicechat.retrieval.store import ChunkRecord

Mode = Literal["e2e", "asr", "text"]
CANDIDATES_PER_HIT = 4  # chunks fetched per requested passage, before merging by passage


class Transcriber(Protocol):
    def transcribe(self, audio_16k: np.ndarray, cancel: threading.Event | None = None) -> tuple[str, str | None]:
        """16 kHz mono -> (text, SONAR language code or None when unknown); raises
        voicechat.cancellation.Cancelled once ``cancel`` is set."""
        ...


@dataclass(frozen=True)
class Hit:
    """A retrieved passage with the best-scoring chunk inside it."""

    score: float
    passage: str
    chunk: ChunkRecord
    chunk_ids: tuple[int, ...]  # every chunk of this passage that matched

    @property
    def source(self) -> str:
        return self.chunk.file

    @property
    def location(self) -> str:
        c = self.chunk
        if c.start == c.end:
            return f"{c.unit} {c.start}"
        return f"{c.unit}s {c.start}-{c.end}"

    def as_json(self) -> dict:
        c = self.chunk
        return {"score": round(self.score, 6), "file": c.file, "heading": c.heading, "unit": c.unit,
                "start": c.start, "end": c.end, "lang": c.lang, "chunk_id": c.id,
                "chunk_ids": list(self.chunk_ids), "text": c.text, "passage": self.passage}


@dataclass(frozen=True)
class Retrieval:
    mode: Mode
    hits: list[Hit]
    query_text: str | None = None  # the typed question or the transcript
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(
            Source(rank=i + 1, score=hit.score, file=hit.chunk.file, heading=hit.chunk.heading,
                   lines=(hit.chunk.start, hit.chunk.end), text=hit.passage, injected=True)
            for i, hit in enumerate(self.hits)
        )


class Retriever:
    """Answers retrieval requests against one opened index. Encoders are loaded by the caller
    (once) and passed in; a mode whose encoder is missing raises ModelError."""

    def __init__(self, index: KnowledgeIndex, config: RetrievalConfig, *,
                 speech: SpeechEncoder | None = None, text: TextEncoder | None = None,
                 transcriber: Transcriber | None = None) -> None:
        self.index = index
        self.config = config
        self.speech = speech
        self.text_encoder = text
        self.transcriber = transcriber

    @property
    def modes(self) -> frozenset[str]:
        """The retrieval modes whose models are loaded."""
        loaded = {"e2e": self.speech, "text": self.text_encoder,
                  "asr": self.transcriber if self.text_encoder is not None else None}
        return frozenset(mode for mode, part in loaded.items() if part is not None)

    def close(self) -> None:
        self.index.close()

    # modes

    def e2e(self, samples: np.ndarray, rate: int, k: int | None = None,
            cancel: threading.Event | None = None) -> Retrieval:
        audio = speech_input(samples, rate)
        encoder = self._need(self.speech, "e2e", "SONAR speech encoder")
        began = time.perf_counter()
        vector = encoder.embed(audio, cancel)
        embedded = time.perf_counter()
        hits = self.search_vector(vector, k)
        return Retrieval("e2e", hits, None, {"embed": embedded - began, "search": time.perf_counter() - embedded})

    def asr(self, samples: np.ndarray, rate: int, k: int | None = None,
            cancel: threading.Event | None = None) -> Retrieval:
        audio = speech_input(samples, rate)
        transcriber = self._need(self.transcriber, "asr", "speech recogniser (Whisper)")
        began = time.perf_counter()
        transcript, lang = transcriber.transcribe(audio, cancel)
        heard = time.perf_counter()
        result = self.text(transcript, k, lang)
        timings = {"asr": heard - began, **result.timings}
        return Retrieval("asr", result.hits, transcript, timings)

    def text(self, question: str, k: int | None = None, lang: str | None = None) -> Retrieval:
        encoder = self._need(self.text_encoder, "text", "SONAR text encoder")
        question = question.strip()
        if not question:
            return Retrieval("text", [], question, {})
        lang = lang or detect_language(question, self.config.languages)
        began = time.perf_counter()
        vector = encoder.embed([question], lang)[0]
        embedded = time.perf_counter()
        hits = self.search_vector(vector, k)
        return Retrieval("text", hits, question, {"embed": embedded - began, "search": time.perf_counter() - embedded})

    def retrieve(self, mode: Mode, *, samples: np.ndarray | None = None, rate: int | None = None,
                 question: str | None = None, k: int | None = None,
                 cancel: threading.Event | None = None) -> Retrieval:
        """``cancel`` stops the speech encoder or Whisper part-way (voicechat.cancellation.Cancelled);
        a typed question is embedded at once."""
        if mode == "text":
            return self.text(question or "", k)
        if samples is None or rate is None:
            raise AudioError(f"retrieval mode {mode} needs audio")
        return self.e2e(samples, rate, k, cancel) if mode == "e2e" else self.asr(samples, rate, k, cancel)

    # two rounds

    def rewrite(self, first: Retrieval, need: str, k: int | None = None) -> Retrieval:
        """Second round of ``rewrite``: embed the stated information need, merge with round one."""
        second = self.text(need, k)
        hits = merge_hits([first.hits, second.hits], k or self.config.top_k)
        timings = {**first.timings, **{f"rewrite_{name}": value for name, value in second.timings.items()}}
        return Retrieval(first.mode, hits, need, timings)

    # search

    def search_vector(self, vector: np.ndarray, k: int | None = None) -> list[Hit]:
        k = k or self.config.top_k
        found = self.index.search(np.asarray(vector, dtype=np.float32)[None, :], k * CANDIDATES_PER_HIT)[0]
        records = self.index.records(chunk_id for chunk_id, _ in found)
        hits = [Hit(score, records[cid].passage, records[cid], (cid,)) for cid, score in found if cid in records]
        hits = [h for h in hits if h.score >= self.config.score_threshold]
        return merge_hits([hits], k)

    @staticmethod
    def _need(part, mode: str, what: str):
        if part is None:
            raise ModelError(f"retrieval mode {mode} needs the {what}, which is not loaded")
        return part


def speech_input(samples: np.ndarray, rate: int) -> np.ndarray:
    """Validated audio at the encoders' rate: 16 kHz mono float32."""
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError("the question audio is empty")
    if not rate or rate < 1000:
        raise AudioError(f"invalid sample rate {rate} Hz for the question audio")
    if samples.ndim > 2:
        raise AudioError(f"question audio must be (samples,) or (samples, channels), got shape {samples.shape}")
    audio = to_model_input(samples, int(rate), MODEL_RATE)
    if not np.isfinite(audio).all():
        raise AudioError("the question audio contains invalid samples (NaN or infinity)")
    return audio


def merge_hits(lists: list[list[Hit]], k: int) -> list[Hit]:
    """One hit per parent passage (its best score, every matching chunk), best first."""
    by_passage: dict[int, Hit] = {}
    for hits in lists:
        for hit in hits:
            key = hit.chunk.passage_id
            old = by_passage.get(key)
            if old is None:
                by_passage[key] = hit
                continue
            ids = tuple(dict.fromkeys(old.chunk_ids + hit.chunk_ids))
            best = hit if hit.score > old.score else old
            by_passage[key] = Hit(best.score, best.passage, best.chunk, ids)
    return sorted(by_passage.values(), key=lambda h: -h.score)[:k]


def load_retriever(config, modes: set[str], knowledge_dir: str | None = None) -> Retriever:
    """Open the configured index and load the encoders that ``modes`` need (once each).
    ``config`` is the whole Config: this is where the model and retrieval sections meet."""
    from voicechat.retrieval import index_location

    knowledge, index_dir = index_location(config.retrieval, config.resolve_path, knowledge_dir)
    index = KnowledgeIndex.open(index_dir, knowledge)
    retriever = Retriever(index, config.retrieval)
    try:
        load_modes(retriever, config, modes)
    except BaseException:
        index.close()
        raise
    return retriever


def load_modes(retriever: Retriever, config, modes: set[str]) -> None:
    """Load into ``retriever`` the encoders that ``modes`` need and it does not have yet; each
    one is attached when ready, so a conversation can go on with the modes it had."""
    from voicechat.errors import KnowledgeIndexError
    from voicechat.retrieval import sonar_spec
    from voicechat.retrieval.encoders import SonarSpeechEncoder, SonarTextEncoder, encoder_identity

    if modes & {"text", "asr"} and retriever.text_encoder is None:
        built_with = (retriever.index.manifest.get("encoder") or {})
        text_spec = sonar_spec(config.models.sonar_text, config.resolve_path)
        current = encoder_identity(text_spec)
        if built_with != current:
            raise KnowledgeIndexError(
                f"{retriever.index.index_dir}: the index was built with text encoder {built_with.get('source')!r} "
                f"but the config now names {current['source']!r}; run `voicechat index` to rebuild it")
        retriever.text_encoder = SonarTextEncoder.load(text_spec, config.offline)
    if "e2e" in modes and retriever.speech is None:
        retriever.speech = SonarSpeechEncoder.load(sonar_spec(config.models.sonar_speech, config.resolve_path),
                                                   config.offline)
    if "asr" in modes and retriever.transcriber is None:
        from voicechat.retrieval.asr import WhisperTranscriber, resolve_asr_model

        retriever.transcriber = WhisperTranscriber.from_pretrained(
            resolve_asr_model(config), config.models.asr, config.retrieval.asr_language,
            config.retrieval.languages)
