"""Runs benchmark questions through the conversation engine, mode by mode, one JSON line each.

Every question gets its own small index of its own passages (``scope="question"``, as in the
study), or all questions share one index over every passage (``scope="global"``), or, for
questions about the user's own knowledge folder, that folder's index (``scope="folder"``). Each
mode is a setting of the same engine the app uses:

- e2e: the question's speech through the SONAR speech encoder
- asr: Whisper transcript through the SONAR text encoder
- text: the gold question text through the SONAR text encoder (an oracle: no recognition errors);
  the model still hears the speech
- norag: no retrieval
- rewrite, fallback: e2e with the two-round modes

With several voice models (GLM-4-Voice, Qwen2.5-Omni) the same questions run through each in
turn, with the same retrieval; every record names its voice model.

Results are appended to ``results.jsonl`` as each question-mode pair finishes; a rerun skips the
pairs already there, so an interrupted run loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from voicechat.audio.resample import MODEL_RATE
from voicechat.config import Config
from voicechat.errors import VoicechatError
from voicechat.evaluation import metrics
from voicechat.evaluation.datasets import Question
from voicechat.evaluation.speech import SpeechSource

MODES: dict[str, tuple[str, str]] = {  # mode -> (engine rag, engine two_round)
    "e2e": ("e2e", "off"),
    "asr": ("asr", "off"),
    "text": ("e2e", "off"),
    "norag": ("off", "off"),
    "rewrite": ("e2e", "rewrite"),
    "fallback": ("e2e", "fallback"),
}
RESULTS = "results.jsonl"
RUN_INFO = "run.json"
VOICE_MODELS = ("glm-4-voice", "qwen2.5-omni")
EARLIER_VOICE_MODEL = "glm-4-voice"  # records and runs written before there was a choice name none


def parse_voice_models(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in VOICE_MODELS]
    if unknown or not names:
        raise VoicechatError(f"unknown voice model(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(VOICE_MODELS)}")
    return list(dict.fromkeys(names))


def voice_model_of(record: dict) -> str:
    return record.get("voice_model", EARLIER_VOICE_MODEL)


def result_key(record: dict) -> tuple[str, str, str]:
    return record["id"], record["mode"], voice_model_of(record)


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise VoicechatError(f"unknown evaluation mode(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


@dataclass(frozen=True)
class RunSpec:
    dataset: str  # "hotpotqa", "rgb" or "folder"
    modes: tuple[str, ...]
    top_k: int
    scope: str = "question"  # or "global", or "folder" for the folder dataset


# --- results file ---------------------------------------------------------------------------------


class ResultsFile:
    """results.jsonl: one line per finished (question, mode); a line cut short by an
    interruption is dropped on the next open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                data = data[:data.rfind(b"\n") + 1]
                with open(path, "r+b") as handle:
                    handle.truncate(len(data))
            for number, line in enumerate(data.decode("utf-8").splitlines()):
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise VoicechatError(f"{path}: line {number + 1} is not a result; "
                                         "remove it or choose another --out folder") from None
        self.done = {result_key(r) for r in self.records}

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
        self.done.add(result_key(record))


def check_run_info(out_dir: Path, info: dict) -> dict:
    """A folder holds one run: resuming with other data or settings would mix results. Returns
    the run's record, with the modes of earlier invocations added, as written to run.json. A run
    without results yet (one that failed before its first question) is simply replaced."""
    path = out_dir / RUN_INFO
    results = out_dir / RESULTS
    finished = results.is_file() and b"\n" in results.read_bytes()  # a line cut short is no result
    if path.exists() and finished:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise VoicechatError(f"{path} is unreadable; remove it or choose another --out folder") from None
        same = {k: old.get(k) for k in ("dataset", "options", "questions", "models")}
        if same != {k: info.get(k) for k in same}:
            raise VoicechatError(f"{out_dir} holds a run with another dataset slice, options or models; "
                                 "choose another --out folder")
        earlier = old.get("voice_models", [EARLIER_VOICE_MODEL])
        info = {**info, "modes": list(dict.fromkeys(old.get("modes", []) + info["modes"])),
                "voice_models": list(dict.fromkeys(earlier + info.get("voice_models", [])))}
    path.write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    return info


# --- retrieval scope ------------------------------------------------------------------------------


class Scopes:
    """Opens the index a question is searched in, with the text encoder loaded once."""

    def __init__(self, config: Config, text_encoder, speech_encoder=None, transcriber=None, top_k: int = 4,
                 folder_index: Path | None = None) -> None:
        self.config = config
        self.text_encoder = text_encoder
        self.speech_encoder = speech_encoder
        self.transcriber = transcriber
        self.folder_index = folder_index  # the user's index, for scope "folder"
        # The study retrieves the top k whatever their scores.
        self.retrieval = dataclasses.replace(config.retrieval, top_k=top_k, score_threshold=-1.0)

    def settings(self):
        from voicechat.retrieval import sonar_spec
        from voicechat.retrieval.encoders import encoder_identity
        from voicechat.retrieval.indexer import Settings

        spec = sonar_spec(self.config.models.sonar_text, self.config.resolve_path)
        return Settings(encoder_identity(spec), self.retrieval.languages, self.retrieval.chunking)

    def update(self, knowledge: Path, index_dir: Path, reporter=None, index_type: str | None = None):
        """Builds or updates the index of a folder with the loaded text encoder."""
        from voicechat.retrieval.indexer import Indexer

        return Indexer(knowledge, index_dir, self.settings(), lambda: self.text_encoder, reporter,
                       index_type or self.retrieval.index_type).update()

    def open(self, index_dir: Path):
        from voicechat.retrieval.index import KnowledgeIndex
        from voicechat.retrieval.retriever import Retriever

        return Retriever(KnowledgeIndex.open(index_dir), self.retrieval, speech=self.speech_encoder,
                         text=self.text_encoder, transcriber=self.transcriber)

    def build(self, questions: Iterable[Question], folder: Path):
        """An opened Retriever over the questions' passages, one file per passage."""
        knowledge, index_dir = folder / "knowledge", folder / "index"
        for question in questions:
            for doc in question.docs:
                path = knowledge / question.doc_file(doc)
                path.parent.mkdir(parents=True, exist_ok=True)
                text = f"{doc.title}: {doc.text}" if doc.title else doc.text
                path.write_text(" ".join(text.split()) + "\n", encoding="utf-8")
        self.update(knowledge, index_dir, index_type="auto")  # a few passages: the configured type may not fit
        return self.open(index_dir)

    def per_question(self, questions: list[Question], scope: str,
                     everything: list[Question] | None = None) -> Iterator[tuple[Question, object]]:
        """Each question with the retriever of its scope; the global index holds the passages of
        ``everything`` (all questions of the run, also those already finished)."""
        with tempfile.TemporaryDirectory(prefix="voicechat-eval-") as tmp:
            if scope == "question":
                for number, question in enumerate(questions):
                    retriever = self.build([question], Path(tmp) / str(number))
                    try:
                        yield question, retriever
                    finally:
                        retriever.index.close()
                return
            if scope == "folder":
                retriever = self.open(self.folder_index)
            else:
                retriever = self.build(everything or questions, Path(tmp))
            try:
                for question in questions:
                    yield question, retriever
            finally:
                retriever.index.close()


class GoldTextRetriever:
    """The text-oracle mode: every spoken retrieval request is answered with the gold question
    text through the SONAR text encoder."""

    def __init__(self, retriever, question_text: str) -> None:
        self.retriever = retriever
        self.question_text = question_text

    @property
    def modes(self) -> frozenset[str]:
        return self.retriever.modes

    def retrieve(self, mode, *, samples=None, rate=None, question=None, k=None, cancel=None):
        return self.retriever.text(self.question_text, k)

    def rewrite(self, first, need, k=None):
        return self.retriever.rewrite(first, need, k)


# --- one question in one mode ---------------------------------------------------------------------


def run_question(config: Config, parts, retriever, question: Question, audio, mode: str,
                 spec: RunSpec, engine=None) -> dict:
    """``engine(emit)``: a remote engine to ask instead (its server's index; ``parts`` is None)."""
    from voicechat.engine import Settings, TurnInput
    from voicechat.events import Retrieved, StageFailed
    from voicechat.session import ConversationSession

    rag, two_round = MODES[mode]
    events: list = []
    session = ConversationSession(config, events.append, save=False, settings=Settings(rag, two_round, config.voice))
    if engine is None:
        parts.retriever = GoldTextRetriever(retriever, question.text) if mode == "text" else retriever
        session.ready(parts)
    else:
        session.ready(None, engine=engine)
    result = session.run_turn(TurnInput(audio=audio))
    rounds = [e for e in events if isinstance(e, Retrieved)]
    retrieved = [source.file for source in result.sources] if rounds else []
    transcript = next((e.query for e in rounds if e.mode == "asr"), None)
    record = {
        "id": question.id,
        "mode": mode,
        "voice_model": config.voice_model,
        "question": question.text,
        "answers": [list(a) for a in question.answers],
        "audio_s": round(len(audio) / MODEL_RATE, 3),
        "reply": result.finished.reply_text,
        "retrieved": retrieved,
        "relevant": question.relevant_files,
        "transcript": transcript,
        "rounds": len(rounds),
        "retrieval_ms": {f"round{e.round}_{e.mode}": round(sum(e.stage_ms.values()), 3) for e in rounds},
        "timings": dataclasses.asdict(result.finished.timings),
        "problems": [f"{e.stage}: {e.message}" for e in events if isinstance(e, StageFailed)],
    }
    record["metrics"] = score(record, question, spec)
    return record


def score(record: dict, question: Question, spec: RunSpec) -> dict:
    reply, answers = record["reply"], question.answers
    found: dict = {}
    if spec.dataset == "hotpotqa":
        found["em"] = metrics.exact_match(reply, question.answer)
        found["f1"] = metrics.f1_score(reply, question.answer)
    elif answers:
        found["accuracy"] = float(metrics.rgb_correct(reply, answers))
    if spec.dataset == "rgb":
        found["rejected"] = float(metrics.is_rejection(reply))
    if record["rounds"]:
        found["recall"] = metrics.recall_at_k(record["retrieved"], record["relevant"], spec.top_k)
        found["mrr"] = metrics.reciprocal_rank(record["retrieved"], record["relevant"])
    if record["transcript"] is not None and question.text:
        found["wer"] = metrics.word_error_rate(question.text, record["transcript"])
        found["cer"] = metrics.char_error_rate(question.text, record["transcript"])
    return found


# --- the whole run --------------------------------------------------------------------------------


def load_encoders(config: Config, modes: Iterable[str]):
    """(text encoder, speech encoder or None, transcriber or None) for the modes asked for."""
    from voicechat.retrieval import sonar_spec
    from voicechat.retrieval.encoders import SonarSpeechEncoder, SonarTextEncoder

    modes = set(modes)
    text = SonarTextEncoder.load(sonar_spec(config.models.sonar_text, config.resolve_path), config.offline)
    speech = transcriber = None
    if modes & {"e2e", "rewrite", "fallback"}:
        speech = SonarSpeechEncoder.load(sonar_spec(config.models.sonar_speech, config.resolve_path), config.offline)
    if modes & {"asr", "fallback"}:
        from voicechat.retrieval.asr import WhisperTranscriber, resolve_asr_model

        transcriber = WhisperTranscriber.from_pretrained(
            resolve_asr_model(config), config.models.asr, config.retrieval.asr_language, config.retrieval.languages)
    return text, speech, transcriber


def run(config: Config, parts, scopes: Scopes, questions: list[Question], speech: SpeechSource,
        spec: RunSpec, results: ResultsFile,
        progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Runs every (question, mode) pair not in ``results`` yet with the config's voice model (the
    one ``parts`` holds); returns all records."""
    voice_model = config.voice_model
    pending = [q for q in questions if any((q.id, m, voice_model) not in results.done for m in spec.modes)]
    total = len(questions) * len(spec.modes)
    done = total - sum(1 for q in pending for m in spec.modes if (q.id, m, voice_model) not in results.done)
    report = progress or (lambda done, total: None)
    report(done, total)
    # closed however the loop ends (also on Ctrl-C), so the questions' indexes and their temporary
    # folder are removed now rather than whenever the generator is garbage collected
    with closing(scopes.per_question(pending, spec.scope, questions)) as scoped:
        for question, retriever in scoped:
            audio = speech.load(question.id)
            for mode in spec.modes:
                if (question.id, mode, voice_model) in results.done:
                    continue
                results.append(run_question(config, parts, retriever, question, audio, mode, spec))
                done += 1
                report(done, total)
    parts.retriever = None
    return results.records


def run_remote(config: Config, engine, questions: list[Question], speech: SpeechSource, spec: RunSpec,
               results: ResultsFile, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """``run`` on a remote engine (``engine(emit)`` makes one conversation's): the questions ask
    about the knowledge folder on the engine server's machine, searched in its index."""
    total = len(questions) * len(spec.modes)
    finished = {(q.id, m) for q in questions for m in spec.modes if (q.id, m, config.voice_model) in results.done}
    done = len(finished)
    report = progress or (lambda done, total: None)
    report(done, total)
    for question in questions:
        modes = [m for m in spec.modes if (question.id, m) not in finished]
        if not modes:
            continue
        audio = speech.load(question.id)
        for mode in modes:
            results.append(run_question(config, None, None, question, audio, mode, spec, engine=engine))
            done += 1
            report(done, total)
    return results.records
