"""Sentence chunking for a sentence encoder ("small to big").

SONAR embeds sentences; texts over 514 tokens are truncated. A passage (paragraph or section) is
split into sentences (English and Chinese punctuation); short windows of consecutive sentences are
embedded, and the passage they came from is what goes to the language model. Every chunk keeps the
line span it covers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voicechat.config import ChunkingConfig

# A sentence ends at . ! ? (and runs of them, with closing quotes/brackets) followed by white space
# and not by a lower-case word, or at Chinese/Japanese full-width terminators, which need no space after them.
_LATIN_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+(?![a-z])|\s*$)")
_CJK_END = re.compile(r"[。！？；]+[”’」』）]*|…{1,2}[”’」』）]*(?=\s*[^\s,，])")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "fig", "no",
    "vol", "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "approx", "cf", "al",
}


@dataclass(frozen=True)
class Passage:
    """A paragraph or section of a document: the context that goes to the model."""

    heading: str
    text: str
    start: int  # first line (or page, or record) of the passage, 1-based
    unit: str = "line"  # what start/end count: "line", "page" or "record"
    end: int | None = None  # last line; derived from the text's newlines when None

    @property
    def last(self) -> int:
        return self.end if self.end is not None else self.start + self.text.count("\n")


@dataclass(frozen=True)
class Chunk:
    """A short sentence window that is embedded, and the passage it belongs to."""

    text: str
    passage: Passage
    start: int
    end: int


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (white space between them excluded)."""
    cuts = {0, len(text)}
    for match in _LATIN_END.finditer(text):
        if not _is_abbreviation(text, match.start()):
            cuts.add(match.end())
    for match in _CJK_END.finditer(text):
        cuts.add(match.end())
    # A blank line always ends a sentence, as does a line break after a line without punctuation
    # that looks like a list item or heading.
    for match in re.finditer(r"\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)", text):
        cuts.add(match.start())
    spans = []
    points = sorted(cuts)
    for start, end in zip(points, points[1:]):
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + lead + len(stripped)))
    return spans


def _is_abbreviation(text: str, dot: int) -> bool:
    if text[dot] != ".":
        return False
    word = re.search(r"([A-Za-z][A-Za-z.]*)$", text[:dot])
    if word is None:
        return False
    token = word.group(1).lower().rstrip(".")
    return token in _ABBREVIATIONS or len(token) == 1  # initials: "J. R. R. Tolkien"


def split_passage(passage: Passage, max_chars: int) -> list[Passage]:
    """A passage longer than ``max_chars`` becomes consecutive passages cut at sentence ends."""
    if len(passage.text) <= max_chars:
        return [passage]
    pieces: list[Passage] = []
    begin = end = 0
    for _, sentence_end in _bounded(split_sentences(passage.text), passage.text, max_chars):
        if sentence_end - begin > max_chars and end > begin:
            pieces.append(_sub_passage(passage, begin, end))
            begin = _skip_space(passage.text, end)
        end = sentence_end
    if end > begin:
        pieces.append(_sub_passage(passage, begin, end))
    return pieces


def _sub_passage(passage: Passage, begin: int, end: int) -> Passage:
    text = passage.text[begin:end]
    if passage.unit != "line":  # pages and records keep their number; only the text is divided
        return Passage(passage.heading, text, passage.start, passage.unit, passage.last)
    return Passage(passage.heading, text, passage.start + passage.text.count("\n", 0, begin))


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _bounded(spans: list[tuple[int, int]], text: str, max_chars: int) -> list[tuple[int, int]]:
    """Sentences longer than ``max_chars`` are cut at a comma or space near the limit."""
    out = []
    for start, end in spans:
        while end - start > max_chars:
            window = text[start:start + max_chars]
            cut = max(window.rfind("，"), window.rfind(","), window.rfind(" "), window.rfind("、"))
            cut = cut + 1 if cut > max_chars // 3 else max_chars
            out.append((start, start + cut))
            start = _skip_space(text, start + cut)
        if end > start:
            out.append((start, end))
    return out


def chunk_passage(passage: Passage, config: ChunkingConfig) -> list[Chunk]:
    """Windows of ``sentences_per_chunk`` sentences, neighbours sharing ``sentence_overlap``."""
    text = passage.text
    spans = _bounded(split_sentences(text), text, config.max_chunk_chars)
    if not spans:
        return []
    size = config.sentences_per_chunk
    overlap = min(config.sentence_overlap, size - 1)
    chunks = []
    first = 0
    while first < len(spans):
        last = min(first + size, len(spans))
        # shrink a window that is too long as a whole (each sentence alone is within the limit)
        while last - first > 1 and spans[last - 1][1] - spans[first][0] > config.max_chunk_chars:
            last -= 1
        start, end = spans[first][0], spans[last - 1][1]
        chunks.append(Chunk(
            text=" ".join(text[start:end].split()) if passage.unit == "line" else text[start:end],
            passage=passage,
            start=_position(passage, start),
            end=_position(passage, end - 1),
        ))
        if last == len(spans):
            break
        first = max(first + 1, last - overlap)  # never skip a sentence
    return chunks


def _position(passage: Passage, offset: int) -> int:
    if passage.unit != "line":
        return passage.start
    return passage.start + passage.text.count("\n", 0, offset)


def chunk_passages(passages: list[Passage], config: ChunkingConfig) -> list[Chunk]:
    chunks = []
    for passage in passages:
        for part in split_passage(passage, config.max_passage_chars):
            chunks.extend(chunk_passage(part, config))
    return chunks


# --- language -------------------------------------------------------------------------------------

# Scripts that identify a language (or a default language for the script) for the text encoder.
_SCRIPTS = [
    (re.compile(r"[\u3040-\u30ff]"), "jpn_Jpan"),
    (re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"), "kor_Hang"),
    (re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]"), "zho_Hans"),
    (re.compile(r"[\u0400-\u04ff]"), "rus_Cyrl"),
    (re.compile(r"[\u0600-\u06ff]"), "arb_Arab"),
    (re.compile(r"[\u0900-\u097f]"), "hin_Deva"),
    (re.compile(r"[\u0370-\u03ff]"), "ell_Grek"),
    (re.compile(r"[\u0590-\u05ff]"), "heb_Hebr"),
    (re.compile(r"[\u0e00-\u0e7f]"), "tha_Thai"),
    (re.compile(r"[A-Za-z\u00c0-\u024f]"), "eng_Latn"),
]
_TRADITIONAL_ONLY = set("這個們來說時會對與為還後麼國學過當應點頭問題體機發經實現並從進關區長見開間變種樣")


def detect_language(text: str, allowed: tuple[str, ...]) -> str:
    """The SONAR language code for ``text`` chosen by its dominant script among ``allowed``;
    one allowed language means no detection. Falls back to the first allowed language."""
    if len(allowed) == 1:
        return allowed[0]
    best, best_count = allowed[0], 0
    for pattern, lang in _SCRIPTS:
        count = len(pattern.findall(text))
        if lang == "zho_Hans" and count and "zho_Hant" in allowed:
            traditional = sum(1 for ch in text if ch in _TRADITIONAL_ONLY)
            if traditional * 4 > count / 10 or "zho_Hans" not in allowed:
                lang = "zho_Hant"
        if lang == "eng_Latn":
            count //= 3  # letters per word vs characters per word in CJK scripts
        if count > best_count:
            match = lang if lang in allowed else _same_script(lang, allowed)
            if match:
                best, best_count = match, count
    return best


def _same_script(lang: str, allowed: tuple[str, ...]) -> str | None:
    script = lang.split("_")[1]
    for candidate in allowed:
        if candidate.endswith("_" + script):
            return candidate
    return None
