"""Answer, retrieval, recognition and latency metrics.

HotpotQA exact match and F1 follow the official script's normalisation (lower case, no
punctuation, no articles a/an/the, single spaces; a yes/no/noanswer mismatch scores 0 F1).
RGB accuracy follows RGB's check: every answer part must appear in the reply, where a part given
as a list is matched by any of its alternatives; a rejection is a reply that says the information
is insufficient.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

# --- HotpotQA -------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred, truth = normalize_answer(prediction), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred in special or truth in special) and pred != truth:
        return 0.0
    pred_tokens, truth_tokens = pred.split(), truth.split()
    common = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


# --- RGB ------------------------------------------------------------------------------------------

REJECTION_PHRASES = ("insufficient information", "信息不足")


def answer_labels(reply: str, answers: Sequence[Sequence[str]]) -> list[int]:
    """1 for each answer part found in the reply (any alternative of the part)."""
    reply = reply.lower()
    return [int(any(alt.lower() in reply for alt in alternatives)) for alternatives in answers]


def rgb_correct(reply: str, answers: Sequence[Sequence[str]]) -> bool:
    labels = answer_labels(reply, answers)
    return bool(labels) and 0 not in labels


def is_rejection(reply: str) -> bool:
    reply = reply.lower()
    return any(phrase in reply for phrase in REJECTION_PHRASES)


# --- retrieval ------------------------------------------------------------------------------------


def recall_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float | None:
    """Share of the relevant passages among the first k retrieved; None without relevant ones."""
    relevant = set(relevant)
    if not relevant:
        return None
    return len(relevant & set(retrieved[:k])) / len(relevant)


def reciprocal_rank(retrieved: Sequence[str], relevant: Iterable[str]) -> float | None:
    relevant = set(relevant)
    if not relevant:
        return None
    return next((1.0 / rank for rank, key in enumerate(retrieved, 1) if key in relevant), 0.0)


# --- recognition ----------------------------------------------------------------------------------


def _edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def _plain(text: str) -> str:
    """Lower case, punctuation (ASCII and CJK) removed, single spaces."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text.lower())
    return " ".join(kept.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = _plain(reference).split(), _plain(hypothesis).split()
    return _edit_distance(ref, hyp) / max(len(ref), 1)


def char_error_rate(reference: str, hypothesis: str) -> float:
    """Over characters without spaces: the usual measure for Chinese."""
    ref, hyp = list(_plain(reference).replace(" ", "")), list(_plain(hypothesis).replace(" ", ""))
    return _edit_distance(ref, hyp) / max(len(ref), 1)


# --- summaries ------------------------------------------------------------------------------------


def percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    data = [v for v in values if v is not None]
    if not data:
        return {"p50": None, "p90": None}
    p50, p90 = np.percentile(np.asarray(data, dtype=np.float64), [50, 90])
    return {"p50": float(p50), "p90": float(p90)}


def mean(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return float(sum(data) / len(data)) if data else None
