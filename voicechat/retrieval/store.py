"""The chunk store (``store.sqlite``): the index's source of truth.

Files (size, mtime, SHA-256), passages, and chunks with their text, provenance, language and
embedding. Each group of files is committed in one transaction as soon as it is embedded, so an
interrupted run keeps its work and a rerun continues. Replaced and deleted chunks are only marked
dead until the next export, so the previous faiss index keeps pointing at existing rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval.chunking import Chunk

STORE = "store.sqlite"


@dataclass(frozen=True)
class ChunkRecord:
    """One search result's provenance and text."""

    id: int
    file: str
    heading: str
    start: int
    end: int
    unit: str
    lang: str
    text: str
    passage_id: int
    passage: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file TEXT NOT NULL, heading TEXT NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, unit TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file TEXT NOT NULL, passage_id INTEGER NOT NULL,
    heading TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, unit TEXT NOT NULL,
    lang TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL, live INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file);
CREATE INDEX IF NOT EXISTS chunks_live ON chunks (live);
"""


class Store:
    """The SQLite chunk store (WAL mode: a reader never sees half a transaction)."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        self.lock = threading.Lock()
        if not create and not path.is_file():
            raise KnowledgeIndexError(f"{path.parent}: no knowledge index here; build it with `voicechat index DIR`")
        try:
            # The engine searches from worker threads; reads are serialised by self.lock.
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise KnowledgeIndexError.corrupt(path, error) from None

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def files(self) -> dict[str, tuple[int, int, str]]:
        rows = self.db.execute("SELECT path, size, mtime_ns, sha256 FROM files")
        return {path: (size, mtime, sha) for path, size, mtime, sha in rows}

    def transaction(self) -> "_Transaction":
        return _Transaction(self.db)

    def bump_generation(self) -> None:
        self.set_meta("generation", int(self.meta("generation", 0)) + 1)

    def retire_file(self, path: str) -> None:
        """Mark a file's chunks dead (kept until the next export) and forget the file."""
        self.db.execute("UPDATE chunks SET live = 0 WHERE file = ?", (path,))
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))

    def file_chunks(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT path, chunks FROM files"))

    def live_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM chunks WHERE live = 1").fetchone()[0])

    def live_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        count = self.live_count()
        ids = np.empty(count, dtype=np.int64)
        vectors = np.empty((count, dim), dtype=np.float32)
        rows = self.db.execute("SELECT id, vector FROM chunks WHERE live = 1 ORDER BY id")
        for i, (chunk_id, blob) in enumerate(rows):
            ids[i] = chunk_id
            vectors[i] = np.frombuffer(blob, dtype=np.float32)
        return ids, vectors

    def purge_dead(self) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM chunks WHERE live = 0")
            self.db.execute("DELETE FROM passages WHERE id NOT IN (SELECT passage_id FROM chunks)")

    def records(self, ids: Iterable[int]) -> dict[int, ChunkRecord]:
        ids = [int(i) for i in ids]
        out: dict[int, ChunkRecord] = {}
        with self.lock:
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                marks = ",".join("?" * len(part))
                rows = self.db.execute(
                    "SELECT c.id, c.file, c.heading, c.start, c.end, c.unit, c.lang, c.text, p.id, p.text "
                    f"FROM chunks c JOIN passages p ON p.id = c.passage_id WHERE c.id IN ({marks})", part)
                for row in rows:
                    out[row[0]] = ChunkRecord(*row)
        return out

    def add_file(self, path: str, stat: tuple[int, int, str], chunks: list[Chunk], langs: list[str],
                 vectors: np.ndarray) -> None:
        """Replace a file's chunks by new ones (call inside a transaction)."""
        self.retire_file(path)
        passage_ids: dict[int, int] = {}
        for chunk, lang, vector in zip(chunks, langs, vectors):
            key = id(chunk.passage)
            if key not in passage_ids:
                p = chunk.passage
                cursor = self.db.execute(
                    "INSERT INTO passages (file, heading, start, end, unit, text) VALUES (?, ?, ?, ?, ?, ?)",
                    (path, p.heading, p.start, p.last, p.unit, p.text))
                passage_ids[key] = int(cursor.lastrowid)
            self.db.execute(
                "INSERT INTO chunks (file, passage_id, heading, start, end, unit, lang, text, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, passage_ids[key], chunk.passage.heading, chunk.start, chunk.end,
                 chunk.passage.unit, lang, chunk.text, np.asarray(vector, dtype=np.float32).tobytes()))
        self.db.execute("INSERT OR REPLACE INTO files (path, size, mtime_ns, sha256, chunks) VALUES (?, ?, ?, ?, ?)",
                        (path, *stat, len(chunks)))

    def reset(self) -> None:
        """Forget every file (their chunks stay readable by the current faiss index until export)."""
        self.db.execute("UPDATE chunks SET live = 0")
        self.db.execute("DELETE FROM files")

    def language_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT lang, COUNT(*) FROM chunks WHERE live = 1 GROUP BY lang ORDER BY 2 DESC")
        return {lang: count for lang, count in rows}

    def passage_count(self) -> int:
        return int(self.db.execute(
            "SELECT COUNT(DISTINCT passage_id) FROM chunks WHERE live = 1").fetchone()[0])


def store_problem(path: Path) -> str | None:
    """Why the store at ``path`` cannot be trusted, or None: SQLite's check of its pages and
    indexes, and every live vector of the recorded dimension. Reads only; one pass over the file."""
    try:
        db = sqlite3.connect(str(path), timeout=30)
    except sqlite3.DatabaseError as error:
        return str(error)
    try:
        found = [line for row in db.execute("PRAGMA quick_check(3)") for line in str(row[0]).splitlines()
                 if line.strip() and not line.startswith("***")]  # "*** in database main ***" heads a list
        if found != ["ok"]:
            return found[0][:200] if found else "SQLite's check failed"
        row = db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        dim = int(json.loads(row[0])) if row else 0
        wrong = db.execute("SELECT COUNT(*) FROM chunks WHERE live = 1 AND length(vector) != ?", (4 * dim,)).fetchone()[0]
        if wrong:
            return f"{wrong} stored vectors are not of the recorded dimension {dim}"
    except (sqlite3.DatabaseError, ValueError) as error:
        return str(error)
    finally:
        db.close()
    return None


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
