"""Evaluation questions: HotpotQA (distractor setting), RGB, and the user's own folder.

A ``Question`` carries everything one evaluation turn needs: the gold text (for the text oracle,
ASR error rates and synthesis), the accepted answers, and either the passages that form its
retrieval scope, each marked relevant (a HotpotQA supporting title, an RGB positive) or not, or
the files of the user's knowledge folder that hold its answer.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicechat.errors import VoicechatError


@dataclass(frozen=True)
class Doc:
    key: str  # unique within its question
    title: str
    text: str
    relevant: bool


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[tuple[str, ...], ...]  # every group must be matched; any alternative of a group will do
    docs: tuple[Doc, ...]
    lang: str  # "en" or "zh"
    sources: tuple[str, ...] = ()  # knowledge-folder files holding the answer (own-folder questions)

    @property
    def answer(self) -> str:
        """The first accepted answer (HotpotQA has exactly one)."""
        return self.answers[0][0] if self.answers and self.answers[0] else ""

    def doc_file(self, doc: Doc) -> str:
        """The file a passage is indexed as: one folder per question, one file per passage."""
        return f"{safe_name(self.id)}/{doc.key}.txt"

    @property
    def relevant_files(self) -> list[str]:
        """The indexed files that count as relevant hits."""
        return list(self.sources) + [self.doc_file(d) for d in self.docs if d.relevant]


def safe_name(question_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in question_id) or "_"


def language_of(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _bad(path: Path, what: str) -> VoicechatError:
    return VoicechatError(f"{path}: {what}; check that it is the right dataset file")


def _not_a_record(path: Path, where: str, kind: str, error: Exception) -> VoicechatError:
    """A record that does not have the expected shape: the missing field, or what is wrong."""
    why = f"missing field {error}" if isinstance(error, KeyError) else str(error)
    return _bad(path, f"{where} is not {kind} ({why})")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise VoicechatError(f"{path}: no such dataset file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _bad(path, f"cannot be read as UTF-8 text ({error})") from None


# --- HotpotQA -------------------------------------------------------------------------------------


def read_hotpotqa(path: Path) -> list[Question]:
    """The distractor-setting JSON: a list of records with _id, question, answer,
    supporting_facts [[title, sentence id]] and context [[title, [sentences]]]."""
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise _bad(path, f"is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(records, list):
        raise _bad(path, "is not a JSON list of HotpotQA records")
    if not records:
        raise _bad(path, "holds no questions")
    return [_hotpot_question(path, i, record) for i, record in enumerate(records)]


def _hotpot_question(path: Path, number: int, record: Any) -> Question:
    try:
        supporting = {str(title) for title, _ in record["supporting_facts"]}
        docs = tuple(
            Doc(str(i), str(title), " ".join(s.strip() for s in sentences).strip(), str(title) in supporting)
            for i, (title, sentences) in enumerate(record["context"])
        )
        return Question(str(record["_id"]), str(record["question"]).strip(), ((str(record["answer"]),),), docs, "en")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise _not_a_record(path, f"record {number + 1}", "a HotpotQA record", error) from None


# --- RGB ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RGBOptions:
    """Passage selection as in RGB: ``passages`` per question, a share ``noise_rate`` of them
    negative (rounded up); the _fact variant mixes in ``correct_rate`` correct positives."""

    passages: int = 5
    noise_rate: float = 0.4
    correct_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.passages < 1:
            raise VoicechatError(f"--passages must be at least 1, got {self.passages}")
        for name in ("noise_rate", "correct_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise VoicechatError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


def rgb_variant(path: Path) -> str:
    """RGB's file names say the variant: en.json, zh_int.json, en_fact.json ..."""
    stem = path.name.split(".")[0]
    return "int" if stem.endswith("_int") else "fact" if stem.endswith("_fact") else "plain"


def read_rgb(path: Path, options: RGBOptions = RGBOptions(), variant: str | None = None) -> list[Question]:
    """RGB JSON lines: id, query, answer (a list; a nested list holds alternatives), positive,
    negative (and positive_wrong in the _fact files)."""
    variant = variant or rgb_variant(path)
    questions = []
    for number, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise _bad(path, f"line {number + 1} is not valid JSON ({error.msg})") from None
        questions.append(_rgb_question(path, number, record, options, variant))
    if not questions:
        raise _bad(path, "holds no questions")
    return questions


def _rgb_question(path: Path, number: int, record: Any, options: RGBOptions, variant: str) -> Question:
    try:
        qid, query = str(record["id"]), str(record["query"]).strip()
        answers = tuple(_alternatives(a) for a in _as_list(record["answer"]))
        rng = random.Random(f"{options.seed}:{qid}")
        docs = select_rgb_docs(record, options, variant, rng)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise _not_a_record(path, f"line {number + 1}", "an RGB record", error) from None
    return Question(qid, query, answers, tuple(Doc(str(i), "", text, rel) for i, (text, rel) in enumerate(docs)),
                    language_of(query))


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def _alternatives(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in _as_list(value))


def select_rgb_docs(record: dict, options: RGBOptions, variant: str, rng: random.Random) -> list[tuple[str, bool]]:
    """(text, is positive) pairs, shuffled, chosen the way RGB's evaluation script chooses them."""
    negatives = [str(t) for t in record["negative"]]
    neg_num = math.ceil(options.passages * options.noise_rate)
    pos_num = options.passages - neg_num
    if variant == "int":
        groups = [[str(t) for t in group] for group in record["positive"]]
        for group in groups:
            rng.shuffle(group)
        positives = [group[0] for group in groups if group]  # one per answer part, as RGB does
        depth = 1
        while len(positives) < pos_num and any(len(g) > depth for g in groups):
            positives += [g[depth] for g in groups if len(g) > depth][:pos_num - len(positives)]
            depth += 1
        docs = [(t, True) for t in positives] + [(t, False) for t in negatives[:max(options.passages - len(positives), 0)]]
    elif variant == "fact":
        correct_num = math.ceil(options.passages * options.correct_rate)
        wrong_num = max(options.passages - neg_num - correct_num, 0)
        indexes = list(range(len(record["positive"])))
        chosen = rng.sample(indexes, min(len(indexes), wrong_num))
        rest = [i for i in indexes if i not in chosen]
        correct = rng.sample(rest, min(len(rest), correct_num))
        docs = ([(str(record["positive_wrong"][i]), False) for i in chosen]
                + [(str(record["positive"][i]), True) for i in correct]
                + [(t, False) for t in negatives[:neg_num]])
    else:
        positives = [str(t) for t in record["positive"]]
        if options.noise_rate < 1.0:  # a short side is made up from the other, as RGB does
            if neg_num > len(negatives):
                neg_num, pos_num = len(negatives), options.passages - len(negatives)
            elif pos_num > len(positives):
                pos_num, neg_num = len(positives), options.passages - len(positives)
        docs = [(t, True) for t in positives[:pos_num]] + [(t, False) for t in negatives[:neg_num]]
    rng.shuffle(docs)
    return docs


# --- your own folder ------------------------------------------------------------------------------


def read_folder_questions(path: Path) -> list[Question]:
    """JSON lines about the user's knowledge folder: id, audio, and optionally text (the words
    spoken), answers (accepted alternatives: one string or a list) and sources (the files, relative
    to the folder, that hold the answer)."""
    questions, seen = [], set()
    for number, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            qid = str(record["id"])
            text = str(record.get("text") or "").strip()
            answers = _strings(record, "answers")
            sources = tuple(Path(s).as_posix() for s in _strings(record, "sources"))
        except json.JSONDecodeError as error:
            raise _bad(path, f"line {number + 1} is not valid JSON ({error.msg})") from None
        except (KeyError, TypeError, AttributeError) as error:
            raise _not_a_record(path, f"line {number + 1}", "a question entry", error) from None
        if qid in seen:
            raise _bad(path, f"line {number + 1} repeats question id {qid!r}")
        seen.add(qid)
        questions.append(Question(qid, text, (answers,) if answers else (), (), language_of(text), sources))
    if not questions:
        raise _bad(path, "holds no questions")
    return questions


def _strings(record: dict, field: str) -> tuple[str, ...]:
    """A field given as one string or a list of strings."""
    values = _as_list(record.get(field) or [])
    if not all(isinstance(v, (str, int, float)) for v in values):
        raise TypeError(f"{field} must be a string or a list of strings")
    return tuple(str(v) for v in values)
