"""Finding and reading the documents of a knowledge folder.

Readers turn .txt .md .rst .html .pdf .json .jsonl files into passages (paragraphs or sections)
with their heading and line span. Hidden folders, the index's own folder, unsupported, binary,
empty, oversized and unreadable files are skipped with a reason. Symbolic links are followed once
when their target is inside the knowledge folder and not indexed already (under its own name or
through another link; a link back up is a loop); a link whose target resolves outside the folder
is skipped with a warning, so that nothing outside the folder is read into the index.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

from voicechat.retrieval.chunking import Passage

MAX_FILE_BYTES = 50 * 1024 * 1024
TEXT_FIELDS = ("text", "content", "body", "passage", "context", "paragraph")
TITLE_FIELDS = ("title", "heading", "name", "question")


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to the knowledge folder
    reason: str
    outside: bool = False  # a symbolic link out of the knowledge folder


class UnreadableFile(Exception):
    """A file that cannot be indexed; the message is the reason shown to the user."""


# --- discovery ------------------------------------------------------------------------------------


def discover(root: Path, exclude: Path | None = None) -> tuple[list[Path], list[Skipped]]:
    """Supported files under ``root`` (sorted), and what was skipped with the reason. Nothing
    outside ``root`` is returned: a symbolic link whose target resolves outside is skipped."""
    walk = _Walk(root.resolve(), exclude.resolve() if exclude is not None else None)
    walk.folder(walk.root, walk.root)
    while walk.links:  # after the folder's own tree, so what both reach keeps its own name
        walk.follow(*walk.links.pop(0))
    return sorted(walk.files), walk.skipped


class _Walk:
    """The folder's own tree first, without following links; then each link, followed once: a
    target outside the folder, already indexed, or in the index's own folder is skipped."""

    def __init__(self, root: Path, excluded: Path | None) -> None:
        self.root = root
        self.excluded = excluded
        self.files: list[Path] = []  # as named under root (through links)
        self.skipped: list[Skipped] = []
        self.links: list[tuple[Path, Path]] = []  # (name under root, the link itself)
        self.folders: dict[Path, Path] = {}  # real folder -> its name under root
        self.real_files: dict[Path, Path] = {}  # real file -> its name under root

    def folder(self, real: Path, shown: Path) -> None:
        self.folders[real] = shown
        try:
            entries = sorted(os.scandir(real), key=lambda entry: entry.name)
        except OSError as error:
            self.skip(shown, f"cannot read folder ({error.strerror})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path, name = real / entry.name, shown / entry.name
            if entry.is_symlink():
                self.links.append((name, path))
            elif entry.is_dir(follow_symlinks=False):
                if path != self.excluded:
                    self.folder(path, name)
            else:
                self.file(path, name)

    def file(self, real: Path, shown: Path) -> None:
        if real.suffix.lower() not in READERS:
            self.skip(shown, f"unsupported file type {real.suffix or '(none)'}")
        elif real in self.real_files:
            self.skip(shown, f"symbolic link to {self.name(self.real_files[real])}, indexed under that name")
        else:
            self.real_files[real] = shown
            self.files.append(shown)

    def follow(self, shown: Path, link: Path) -> None:
        target = Path(os.path.realpath(link))
        if not target.exists():
            self.skip(shown, "broken symbolic link")
        elif not target.is_relative_to(self.root):
            self.skipped.append(Skipped(self.name(shown), f"symbolic link to {target}, outside the knowledge folder",
                                        outside=True))
        elif self.excluded is not None and target.is_relative_to(self.excluded):
            self.skip(shown, "symbolic link into the index folder")
        elif target.is_dir() and target in self.folders:
            if link.parent.resolve().is_relative_to(target):
                self.skip(shown, "symbolic link loop (folder already indexed)")
            else:
                self.skip(shown, f"symbolic link to {self.name(self.folders[target])}, indexed under that name")
        elif target.is_dir():
            self.folder(target, shown)
        else:
            self.file(target, shown)

    def skip(self, shown: Path, reason: str) -> None:
        self.skipped.append(Skipped(self.name(shown), reason))

    def name(self, shown: Path) -> str:
        return _relative(shown, self.root) or "."


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --- reading --------------------------------------------------------------------------------------


def read_passages(path: Path) -> list[Passage]:
    """The passages of one file; raises UnreadableFile with the reason."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise UnreadableFile(f"cannot read ({error.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(f"too large ({size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB)")
    if size == 0:
        raise UnreadableFile("empty file")
    reader = READERS[path.suffix.lower()]
    try:
        passages = reader(path)
    except UnreadableFile:
        raise
    except OSError as error:
        raise UnreadableFile(f"cannot read ({error.strerror or error})") from None
    passages = [p for p in passages if p.text.strip()]
    if not passages:
        raise UnreadableFile("no text found")
    return passages


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else Windows-1252/Latin-1. Binary data (NUL
    bytes or many control characters) is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:8192]:
        raise UnreadableFile("binary file (not text)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    sample = text[:8192]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    if sample and controls > len(sample) * 0.05:
        raise UnreadableFile("binary file (not text)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_text_file(path: Path) -> str:
    return decode_text(path.read_bytes())


def _paragraphs(lines: list[str], first_line: int, heading: str) -> Iterator[Passage]:
    """Blank-line separated paragraphs of ``lines`` (numbered from ``first_line``)."""
    start = None
    for i, line in enumerate(lines + [""]):
        if line.strip():
            if start is None:
                start = i
        elif start is not None:
            yield Passage(heading, "\n".join(lines[start:i]), first_line + start)
            start = None


def read_plain(path: Path) -> list[Passage]:
    return list(_paragraphs(_read_text_file(path).split("\n"), 1, ""))


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
]


def read_markdown(path: Path) -> list[Passage]:
    lines = _read_text_file(path).split("\n")
    titles: list[str] = []
    passages: list[Passage] = []
    section_start = 0
    in_fence = False

    def flush(end: int) -> None:
        body = [_md_inline(line) for line in lines[section_start:end]]
        passages.extend(_paragraphs(body, section_start + 1, " > ".join(titles)))

    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        match = None if in_fence else _MD_HEADING.match(line)
        underline = (not in_fence and i > 0 and lines[i - 1].strip() and re.fullmatch(r"=+|-+", line.strip())
                     and not lines[i - 1].lstrip().startswith(("#", "-", "*")))
        if match or underline:
            flush(i - 1 if underline else i)
            level = len(match.group(1)) if match else (1 if line.strip()[0] == "=" else 2)
            title = _md_inline(match.group(2) if match else lines[i - 1].strip())
            titles[level - 1:] = [title]
            section_start = i + 1
    flush(len(lines))
    return passages


def _md_inline(line: str) -> str:
    for pattern, replacement in _MD_INLINE:
        line = pattern.sub(replacement, line)
    return line


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def read_rst(path: Path) -> list[Passage]:
    lines = _read_text_file(path).split("\n")
    levels: list[str] = []  # underline characters in order of first appearance
    titles: list[str] = []
    passages: list[Passage] = []
    section_start = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        is_title = (i + 1 < len(lines) and line.strip() and _RST_UNDERLINE.match(lines[i + 1])
                    and len(lines[i + 1].strip()) >= len(line.strip()))
        if is_title:
            passages.extend(_paragraphs(lines[section_start:i], section_start + 1, " > ".join(titles)))
            mark = lines[i + 1].strip()[0]
            if mark not in levels:
                levels.append(mark)
            level = levels.index(mark)
            titles[level:] = [line.strip()]
            section_start = i + 2
            i += 2
            continue
        i += 1
    passages.extend(_paragraphs(lines[section_start:], section_start + 1, " > ".join(titles)))
    return [p for p in passages if not _RST_UNDERLINE.match(p.text.strip())]


class _HtmlText(HTMLParser):
    BLOCKS = {"p", "div", "li", "td", "th", "pre", "blockquote", "section", "article", "br", "tr",
              "dd", "dt", "figcaption", "caption", "main", "header", "footer", "ul", "ol", "table"}
    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP = {"script", "style", "noscript", "template", "svg", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.passages: list[Passage] = []
        self.titles: list[str] = []
        self._buffer: list[str] = []
        self._line = 1
        self._skip = 0
        self._heading: int | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self._flush()
            if tag in self.HEADINGS:
                self._heading = int(tag[1])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.HEADINGS and self._heading is not None:
            title = " ".join("".join(self._buffer).split())
            self._buffer = []
            if title:
                self.titles[self._heading - 1:] = [title]
            self._heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not "".join(self._buffer).strip():  # the passage starts at its first visible text
            self._line = self.getpos()[0] + data[: len(data) - len(data.lstrip())].count("\n")
        self._buffer.append(data)

    def _flush(self) -> None:
        if self._heading is not None:
            return
        raw = "".join(self._buffer)
        self._buffer = []
        text = "\n".join(" ".join(line.split()) for line in raw.strip().split("\n") if line.strip())
        if text:
            end = self._line + text.count("\n")
            self.passages.append(Passage(" > ".join(self.titles), text, self._line, "line", end))

    def close(self) -> None:
        super().close()
        self._flush()


def read_html(path: Path) -> list[Passage]:
    parser = _HtmlText()
    parser.feed(_read_text_file(path))
    parser.close()
    return parser.passages


def read_pdf(path: Path) -> list[Passage]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise UnreadableFile("encrypted PDF")
        passages = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            for paragraph in re.split(r"\n\s*\n", text):
                paragraph = "\n".join(line.strip() for line in paragraph.split("\n") if line.strip())
                if paragraph:
                    passages.append(Passage(f"page {number}", paragraph, number, "page", number))
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UnreadableFile(f"not a readable PDF ({type(error).__name__})") from None
    return passages


def read_json(path: Path) -> list[Passage]:
    text = _read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableFile(f"invalid JSON (line {error.lineno}: {error.msg})") from None
    if isinstance(data, dict):
        inner = next((data[k] for k in ("data", "records", "documents", "items") if isinstance(data.get(k), list)), None)
        data = inner if inner is not None else [data]
    if not isinstance(data, list):
        raise UnreadableFile("JSON must be a record, a list of records or {\"data\": [...]}")
    passages = []
    for number, record in enumerate(data, start=1):
        passage = _record_passage(record, number, "record")
        if passage:
            passages.append(passage)
    if data and not passages:
        raise UnreadableFile(f"no records with a text field ({', '.join(TEXT_FIELDS)})")
    return passages


def read_jsonl(path: Path) -> list[Passage]:
    passages = []
    bad = 0
    for number, line in enumerate(_read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        passage = _record_passage(record, number, "line")
        if passage:
            passages.append(passage)
    if not passages:
        reason = f"{bad} invalid JSON lines" if bad else f"no records with a text field ({', '.join(TEXT_FIELDS)})"
        raise UnreadableFile(reason)
    return passages


def _record_passage(record: object, number: int, unit: str) -> Passage | None:
    if isinstance(record, str):
        return Passage("", record, number, unit, number)
    if not isinstance(record, dict):
        return None
    body = next((record[k] for k in TEXT_FIELDS if isinstance(record.get(k), (str, list))), None)
    if isinstance(body, list):
        body = "\n".join(str(item) for item in body if isinstance(item, str))
    if not body:
        return None
    title = next((str(record[k]) for k in TITLE_FIELDS if isinstance(record.get(k), (str, int))), "")
    return Passage(title, body, number, unit, number)


READERS: dict[str, Callable[[Path], list[Passage]]] = {
    ".txt": read_plain,
    ".text": read_plain,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".rst": read_rst,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".json": read_json,
    ".jsonl": read_jsonl,
}
