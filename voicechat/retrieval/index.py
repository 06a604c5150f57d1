"""The knowledge index on disk: a chunk store, a faiss index derived from it, and a manifest.

Layout of the index folder:

- ``store.sqlite``: the source of truth. Files (size, mtime, SHA-256), passages, and chunks with
  their text, provenance, language and embedding. Each group of files is committed in one
  transaction as soon as it is embedded, so an interrupted run keeps its work and a rerun
  continues. Replaced and deleted chunks are only marked dead until the next export, so the
  previous faiss index keeps pointing at existing rows.
- ``vectors.faiss``, ``ids.npy`` and ``embeddings.npy``: the search index over the live chunks,
  the chunk id of each row, and the L2-normalised float32 embedding matrix. Rebuilt from the store
  (without the encoder) whenever the store has changed.
- ``manifest.json``: format version, encoder, dimension, languages, chunking, index type and its
  tuned search parameter, per-file size/mtime/hash, and the store generation it was exported from.

Every file is written under a temporary name and renamed into place; the manifest goes last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np

from voicechat.config import ChunkingConfig
from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval.chunking import Chunk, chunk_passages, detect_language
from voicechat.retrieval.corpus import UnreadableFile, discover, read_passages

FORMAT_VERSION = 1
DEFAULT_INDEX_FOLDER = ".voicechat-index"
MANIFEST = "manifest.json"
STORE = "store.sqlite"
FAISS_FILE = "vectors.faiss"
IDS_FILE = "ids.npy"
EMBEDDINGS_FILE = "embeddings.npy"

IndexType = Literal["auto", "flat", "hnsw", "ivf"]
FLAT_MAX_CHUNKS = 20_000  # exact search scans 80 MB per query here: ~15 ms; above, IVF
TARGET_RECALL = 0.95
TUNING_MARGIN = 0.03  # tune to 0.98 on the sample so that the target holds on unseen queries
GROUP_CHUNKS = 256  # chunks embedded and committed together


def default_index_dir(knowledge_dir: Path) -> Path:
    return knowledge_dir / DEFAULT_INDEX_FOLDER


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


class EmbeddingEncoder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str], langs: Sequence[str] | str,
              progress: Callable[[int], None] | None = None) -> np.ndarray: ...


class Reporter(Protocol):
    """What the indexer tells its user; the CLI draws a progress bar from it."""

    def note(self, message: str) -> None: ...
    def skipped(self, path: str, reason: str) -> None: ...
    def planned(self, files: int, chunks: int) -> None: ...
    def embedded(self, chunks: int) -> None: ...
    def file_done(self, path: str) -> None: ...


class SilentReporter:
    def note(self, message: str) -> None: pass
    def skipped(self, path: str, reason: str) -> None: pass
    def planned(self, files: int, chunks: int) -> None: pass
    def embedded(self, chunks: int) -> None: pass
    def file_done(self, path: str) -> None: pass


@dataclass
class UpdateReport:
    files: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    chunks_embedded: int = 0
    chunks_total: int = 0
    rebuilt_reason: str | None = None
    exported: bool = False
    index_type: str = ""
    seconds: float = 0.0


# --- the store ------------------------------------------------------------------------------------

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
            raise _corrupt(path, error) from None

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


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _corrupt(path: Path, error: Exception) -> KnowledgeIndexError:
    return KnowledgeIndexError(
        f"{path}: the knowledge index is corrupt ({error}); rebuild it with `voicechat index DIR --rebuild`")


# --- atomic files ---------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    _atomic_write(path, write)


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and hash of the first and last MiB: catches truncation without reading gigabytes."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), 2)
            digest.update(handle.read())
    return {"size": size, "sha256_ends": digest.hexdigest()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- faiss ----------------------------------------------------------------------------------------


def choose_index_type(count: int, requested: IndexType = "auto") -> str:
    if requested != "auto":
        return requested
    return "flat" if count <= FLAT_MAX_CHUNKS else "ivf"


def build_faiss(vectors: np.ndarray, kind: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``vectors`` (rows are unit vectors; inner product = cosine). Approximate
    indexes are tuned on a sample of perturbed stored vectors until recall@10 against exact
    search reaches the target plus a margin."""
    count, dim = vectors.shape
    if count < 1000:  # too few to train or to need an approximate index
        kind = "flat"
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(count, size=min(count, training_size(count)), replace=False))]
    index, params = new_faiss_index(kind, dim, count, sample)
    for start in range(0, count, 65536):
        index.add(np.ascontiguousarray(vectors[start:start + 65536]))
    if kind != "flat":
        queries = tuning_queries(vectors, seed)
        truth = exact_search(vectors, queries, 10)
        value, recall = tune(index, kind, queries, truth)
        params.update({"search_param": value, "tuned_recall_at_10": round(recall, 4)})
    return index, params


def ivf_lists(count: int) -> int:
    return int(min(max(16, math.sqrt(count)), max(1, count // 40)))


def training_size(count: int) -> int:
    """Vectors an IVF index is trained on: 40 per list (faiss warns below 39)."""
    return 40 * ivf_lists(count)


def new_faiss_index(kind: str, dim: int, count: int, sample: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """An empty index of ``kind`` for about ``count`` vectors; IVF is trained on ``sample``."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim), {"type": "flat"}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        return index, {"type": "hnsw", "M": 32, "efConstruction": 80}
    if kind == "ivf":
        nlist = ivf_lists(count)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return index, {"type": "ivf", "nlist": nlist}
    raise KnowledgeIndexError(f"unknown index type {kind!r}; use auto, flat, hnsw or ivf")


def tuning_queries(vectors: np.ndarray, seed: int = 0, count: int = 200, noise: float = 0.5) -> np.ndarray:
    """Stored vectors with added noise: queries near, but not on, the data, as questions are."""
    rng = np.random.default_rng(seed + 1)
    picks = vectors[rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)]
    jitter = rng.standard_normal(picks.shape).astype(np.float32) * (noise / math.sqrt(vectors.shape[1]))
    queries = picks + jitter
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Top-k row numbers by inner product, in blocks (memory stays small for millions of rows)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ vectors[start:start + block].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, 1)
        best_rows = np.take_along_axis(merged_rows, order, 1)
    return best_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def set_search_param(index: Any, kind: str, value: int) -> None:
    if kind == "ivf":
        index.nprobe = value
    elif kind == "hnsw":
        index.hnsw.efSearch = value


def tune(index: Any, kind: str, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    k = truth.shape[1]
    limit = index.nlist if kind == "ivf" else 4096
    value = 1 if kind == "ivf" else 16
    while True:
        set_search_param(index, kind, value)
        _, rows = index.search(queries, k)
        recall = recall_at_k(rows, truth)
        if recall >= TARGET_RECALL + TUNING_MARGIN or value >= limit:
            return value, recall
        value = min(limit, value * 2)


def search_index(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query runs on one thread: for a single vector, OpenMP start-up and a busy second core
    cost more than they save (measured 2x slower with two threads)."""
    import faiss

    if len(queries) > 1:
        return index.search(queries, k)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _read_faiss(path: Path, params: dict[str, Any]) -> Any:
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise _corrupt(path, str(error).splitlines()[-1][-120:]) from None
    if "search_param" in params:
        set_search_param(index, params["type"], int(params["search_param"]))
    return index


# --- manifest -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the embeddings depend on: a change to any of these means re-embedding everything."""

    encoder: dict[str, Any]
    languages: tuple[str, ...]
    chunking: ChunkingConfig

    def as_json(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "languages": list(self.languages),
                "chunking": dataclasses.asdict(self.chunking)}


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    path = index_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(path, error) from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise _corrupt(path, "not a voicechat index manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        raise KnowledgeIndexError(
            f"{index_dir}: index format {manifest['format_version']} is not supported by this version "
            f"(expects {FORMAT_VERSION}); rebuild it with `voicechat index DIR --rebuild`")
    return manifest


def explain_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """One sentence naming what differs between stored and current settings, or None."""
    reasons = []
    if old.get("encoder") != new["encoder"]:
        before = old.get("encoder", {}) or {}
        what = "weights" if before.get("source") == new["encoder"].get("source") else "model"
        reasons.append(f"the text encoder {what} changed ({before.get('source')!r} -> {new['encoder']['source']!r})")
    if old.get("chunking") != new["chunking"]:
        changed = [k for k in new["chunking"] if (old.get("chunking") or {}).get(k) != new["chunking"][k]]
        reasons.append("chunking settings changed (" + ", ".join(
            f"{k}: {(old.get('chunking') or {}).get(k)} -> {new['chunking'][k]}" for k in changed) + ")")
    if old.get("languages") != new["languages"]:
        reasons.append(f"languages changed ({old.get('languages')} -> {new['languages']})")
    return "; ".join(reasons) or None


# --- building -------------------------------------------------------------------------------------


@dataclass
class _Pending:
    path: str
    stat: tuple[int, int, str]
    chunks: list[Chunk]
    langs: list[str] = field(default_factory=list)


class Indexer:
    """Builds and updates the index of one knowledge folder."""

    def __init__(self, knowledge_dir: Path, index_dir: Path, settings: Settings,
                 load_encoder: Callable[[], EmbeddingEncoder], reporter: Reporter | None = None,
                 index_type: IndexType = "auto") -> None:
        self.root = knowledge_dir.resolve()
        self.index_dir = index_dir
        self.settings = settings
        self._load_encoder = load_encoder
        self._encoder: EmbeddingEncoder | None = None
        self.reporter = reporter or SilentReporter()
        self.index_type = index_type

    def update(self, rebuild: bool = False) -> UpdateReport:
        began = time.perf_counter()
        if not self.root.is_dir():
            raise KnowledgeIndexError(f"{self.root}: no such knowledge folder")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        report = UpdateReport()
        store = self._open_store(report)
        try:
            self._check_settings(store, report, rebuild)
            files, skipped = discover(self.root, exclude=self.index_dir)
            for item in skipped:
                self.reporter.skipped(item.path, item.reason)
            report.skipped = len(skipped)
            pending = self._plan(store, files, report)
            self._embed_and_store(store, pending, report)
            report.chunks_total = store.live_count()
            self._export_if_needed(store, report)
        finally:
            store.close()
        report.seconds = time.perf_counter() - began
        return report

    # steps

    def _open_store(self, report: UpdateReport) -> Store:
        path = self.index_dir / STORE
        try:
            store = Store(path, create=True)
            store.db.execute("SELECT COUNT(*) FROM files").fetchone()
            return store
        except (KnowledgeIndexError, sqlite3.DatabaseError) as error:
            for name in (STORE, STORE + "-wal", STORE + "-shm", MANIFEST):
                (self.index_dir / name).unlink(missing_ok=True)
            report.rebuilt_reason = f"the index store was unreadable ({error})"
            self.reporter.note(f"rebuilding: {report.rebuilt_reason}")
            return Store(path, create=True)

    def _check_settings(self, store: Store, report: UpdateReport, rebuild: bool) -> None:
        current = {**self.settings.as_json(), "root": str(self.root)}
        stored = store.meta("settings")
        reason = "requested with --rebuild" if rebuild else None
        if stored is None:
            reason = None if not store.files() else "the index has no recorded settings"
        elif reason is None:
            reason = explain_change(stored, current)
            if reason is None and stored.get("root") != current["root"]:
                reason = f"the index was built for another folder ({stored.get('root')})"
        if reason:
            report.rebuilt_reason = reason
            self.reporter.note(f"rebuilding the whole index: {reason}")
        with store.transaction():
            if reason:
                store.reset()
                store.bump_generation()
            store.set_meta("settings", current)
            store.set_meta("format_version", FORMAT_VERSION)

    def _plan(self, store: Store, files: list[Path], report: UpdateReport) -> list[_Pending]:
        known = store.files()
        seen: set[str] = set()
        pending: list[_Pending] = []
        report.files = len(files)
        for path in files:
            rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
            seen.add(rel)
            try:
                info = path.stat()
            except OSError as error:
                self.reporter.skipped(rel, f"cannot read ({error.strerror})")
                report.skipped += 1
                continue
            previous = known.get(rel)
            if previous and previous[:2] == (info.st_size, info.st_mtime_ns):
                report.unchanged += 1
                continue
            try:
                digest = sha256_file(path)
            except OSError as error:
                self.reporter.skipped(rel, f"cannot read ({error.strerror})")
                report.skipped += 1
                continue
            stat = (info.st_size, info.st_mtime_ns, digest)
            if previous and previous[2] == digest:  # touched, not changed
                with store.transaction():
                    store.db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                                     (info.st_size, info.st_mtime_ns, rel))
                report.unchanged += 1
                continue
            try:
                chunks = chunk_passages(read_passages(path), self.settings.chunking)
            except UnreadableFile as error:
                self.reporter.skipped(rel, str(error))
                report.skipped += 1
                if previous:
                    with store.transaction():
                        store.retire_file(rel)
                        store.bump_generation()
                continue
            if previous:
                report.changed += 1
            else:
                report.added += 1
            langs = [detect_language(c.text, self.settings.languages) for c in chunks]
            pending.append(_Pending(rel, stat, chunks, langs))
        gone = [rel for rel in known if rel not in seen]
        if gone:
            with store.transaction():
                for rel in gone:
                    store.retire_file(rel)
                store.bump_generation()
            report.deleted = len(gone)
        return pending

    def _embed_and_store(self, store: Store, pending: list[_Pending], report: UpdateReport) -> None:
        if not pending:
            return
        total = sum(len(p.chunks) for p in pending)
        self.reporter.planned(len(pending), total)
        group: list[_Pending] = []
        size = 0
        for item in pending:
            group.append(item)
            size += len(item.chunks)
            if size >= GROUP_CHUNKS:
                self._commit_group(store, group, report)
                group, size = [], 0
        if group:
            self._commit_group(store, group, report)

    def _commit_group(self, store: Store, group: list[_Pending], report: UpdateReport) -> None:
        texts = [c.text for item in group for c in item.chunks]
        langs = [lang for item in group for lang in item.langs]
        vectors = self.encoder.embed(texts, langs, progress=self.reporter.embedded)
        with store.transaction():
            offset = 0
            for item in group:
                n = len(item.chunks)
                store.add_file(item.path, item.stat, item.chunks, item.langs, vectors[offset:offset + n])
                offset += n
            store.set_meta("dim", int(vectors.shape[1]))
            store.bump_generation()
        report.chunks_embedded += len(texts)
        for item in group:
            self.reporter.file_done(item.path)

    @property
    def encoder(self) -> EmbeddingEncoder:
        if self._encoder is None:
            self.reporter.note("loading the text encoder")
            self._encoder = self._load_encoder()
        return self._encoder

    def _export_if_needed(self, store: Store, report: UpdateReport) -> None:
        generation = int(store.meta("generation", 0))
        try:
            manifest = read_manifest(self.index_dir)
        except KnowledgeIndexError:
            manifest = None
        fresh = (manifest is not None and manifest.get("generation") == generation
                 and _derived_files_intact(self.index_dir, manifest)
                 and manifest["index"].get("requested", "auto") == self.index_type)
        if fresh:
            report.index_type = manifest["index"]["type"]
            return
        self.reporter.note("writing the search index")
        export(store, self.index_dir, self.index_type)
        store.purge_dead()
        report.exported = True
        report.index_type = read_manifest(self.index_dir)["index"]["type"]


def _derived_files_intact(index_dir: Path, manifest: dict[str, Any]) -> bool:
    for name, expected in manifest.get("artifacts", {}).items():
        path = index_dir / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return False
    return True


def export(store: Store, index_dir: Path, requested: IndexType = "auto") -> dict[str, Any]:
    """Writes embeddings, ids and the faiss index of the live chunks, then the manifest."""
    import faiss

    dim = int(store.meta("dim") or 0)
    ids, vectors = store.live_vectors(dim) if dim else (np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    kind = choose_index_type(len(ids), requested)
    if len(ids):
        index, params = build_faiss(vectors, kind)
        _atomic_write(index_dir / FAISS_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    else:
        params = {"type": "flat"}
        (index_dir / FAISS_FILE).unlink(missing_ok=True)
    params["requested"] = requested
    _save_npy(index_dir / IDS_FILE, ids)
    _save_npy(index_dir / EMBEDDINGS_FILE, vectors)
    artifacts = {name: file_fingerprint(index_dir / name)
                 for name in (FAISS_FILE, IDS_FILE, EMBEDDINGS_FILE) if (index_dir / name).exists()}
    settings = store.meta("settings") or {}
    files = {path: {"size": size, "mtime_ns": mtime, "sha256": sha}
             for path, (size, mtime, sha) in sorted(store.files().items())}
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": int(store.meta("generation", 0)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "knowledge_dir": settings.get("root"),
        "encoder": settings.get("encoder"),
        "dim": dim,
        "languages": settings.get("languages"),
        "chunking": settings.get("chunking"),
        "chunks": int(len(ids)),
        "index": params,
        "artifacts": artifacts,
        "files": files,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    _atomic_write(index_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return manifest


# --- searching ------------------------------------------------------------------------------------


class KnowledgeIndex:
    """A built index opened for search: the faiss index and row ids in memory, chunk text and
    provenance read from the store on demand."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], faiss_index: Any, ids: np.ndarray,
                 store: Store) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self._faiss = faiss_index
        self._ids = ids
        self._store = store

    @classmethod
    def open(cls, index_dir: Path) -> "KnowledgeIndex":
        manifest = read_manifest(index_dir)
        if manifest is None and (index_dir / STORE).is_file():  # the manifest is written last
            raise KnowledgeIndexError(
                f"{index_dir}: building this index was interrupted before it finished; "
                "run `voicechat index DIR` to finish it")
        if manifest is None:
            raise KnowledgeIndexError(
                f"{index_dir}: no knowledge index here; build it with `voicechat index DIR`")
        for name, expected in manifest.get("artifacts", {}).items():
            path = index_dir / name
            if not path.is_file():
                raise KnowledgeIndexError(
                    f"{path}: index file is missing; rebuild with `voicechat index DIR`")
            actual = file_fingerprint(path)
            if actual != expected:
                what = "truncated" if actual["size"] < expected["size"] else "changed since it was written"
                raise _corrupt(path, f"file is {what}")
        try:
            ids = np.load(index_dir / IDS_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise _corrupt(index_dir / IDS_FILE, error) from None
        faiss_index = _read_faiss(index_dir / FAISS_FILE, manifest["index"]) if len(ids) else None
        store = Store(index_dir / STORE)
        return cls(index_dir, manifest, faiss_index, ids, store)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(chunk id, score) pairs, best first, for each query row."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._faiss is None:
            return [[] for _ in queries]
        if queries.shape[1] != self.dim:
            raise KnowledgeIndexError(
                f"{self.index_dir}: the query embedding has {queries.shape[1]} dimensions but the index has "
                f"{self.dim}; the speech and text encoders must come from the same SONAR space")
        scores, rows = search_index(self._faiss, queries, min(k, len(self._ids)))
        return [[(int(self._ids[r]), float(s)) for r, s in zip(row, score) if r >= 0]
                for row, score in zip(rows, scores)]

    def records(self, ids: Iterable[int]) -> dict[int, ChunkRecord]:
        try:
            return self._store.records(ids)
        except sqlite3.DatabaseError as error:
            raise _corrupt(self._store.path, error) from None

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.index_dir.iterdir() if p.is_file())
        return {
            "knowledge_dir": self.manifest.get("knowledge_dir"),
            "index_dir": str(self.index_dir),
            "files": len(self.manifest.get("files", {})),
            "chunks": len(self._ids),
            "passages": self._store.passage_count(),
            "languages": self._store.language_counts(),
            "index_type": self.manifest["index"]["type"],
            "index": self.manifest["index"],
            "dim": self.dim,
            "encoder": self.manifest.get("encoder"),
            "chunking": self.manifest.get("chunking"),
            "size_bytes": size,
            "updated": self.manifest.get("updated"),
        }

    def close(self) -> None:
        self._store.close()
