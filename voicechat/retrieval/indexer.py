"""Building and updating the index of a knowledge folder: find the files that changed, chunk and
embed them, commit each group to the store as soon as it is embedded, then export the search files
(faiss index, ids, embeddings) and the manifest from the store."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from voicechat.config import ChunkingConfig
from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval.chunking import Chunk, chunk_passages, detect_language
from voicechat.retrieval.corpus import UnreadableFile, discover, read_passages
from voicechat.retrieval.faiss_index import IndexType, build_faiss, choose_index_type
from voicechat.retrieval.index import EMBEDDINGS_FILE, FAISS_FILE, IDS_FILE
from voicechat.retrieval.manifest import (
    FORMAT_VERSION, MANIFEST, artifacts_look_intact, atomic_write, file_fingerprint, read_manifest, write_manifest)
from voicechat.retrieval.store import STORE, Store

GROUP_CHUNKS = 256  # chunks embedded and committed together


@dataclass(frozen=True)
class Settings:
    """What the embeddings depend on: a change to any of these means re-embedding everything."""

    encoder: dict[str, Any]
    languages: tuple[str, ...]
    chunking: ChunkingConfig

    def as_json(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "languages": list(self.languages),
                "chunking": dataclasses.asdict(self.chunking)}


class EmbeddingEncoder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str], langs: Sequence[str] | str,
              progress: Callable[[int], None] | None = None) -> np.ndarray: ...


class Reporter(Protocol):
    """What the indexer tells its user; the CLI draws a progress bar from it."""

    def note(self, message: str) -> None: ...
    def loading(self, what: str) -> AbstractContextManager[None]: ...
    def skipped(self, path: str, reason: str) -> None: ...
    def planned(self, files: int, chunks: int) -> None: ...
    def embedded(self, chunks: int) -> None: ...
    def file_done(self, path: str) -> None: ...


class SilentReporter:
    def note(self, message: str) -> None: pass
    def loading(self, what: str) -> AbstractContextManager[None]: return nullcontext()
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
        self.encoder()  # loaded before the progress bar starts, which would stand still meanwhile
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
        vectors = self.encoder().embed(texts, langs, progress=self.reporter.embedded)
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

    def encoder(self) -> EmbeddingEncoder:
        if self._encoder is None:
            with self.reporter.loading("the text encoder"):
                self._encoder = self._load_encoder()
        return self._encoder

    def _export_if_needed(self, store: Store, report: UpdateReport) -> None:
        generation = int(store.meta("generation", 0))
        try:
            manifest = read_manifest(self.index_dir)
        except KnowledgeIndexError:
            manifest = None
        fresh = (manifest is not None and manifest.get("generation") == generation
                 and artifacts_look_intact(self.index_dir, manifest)
                 and manifest["index"].get("requested", "auto") == self.index_type)
        if fresh:
            report.index_type = manifest["index"]["type"]
            return
        self.reporter.note("writing the search index")
        export(store, self.index_dir, self.index_type)
        store.purge_dead()
        report.exported = True
        report.index_type = read_manifest(self.index_dir)["index"]["type"]


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(store: Store, index_dir: Path, requested: IndexType = "auto") -> dict[str, Any]:
    """Writes embeddings, ids and the faiss index of the live chunks, then the manifest."""
    import faiss

    dim = int(store.meta("dim") or 0)
    ids, vectors = store.live_vectors(dim) if dim else (np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    kind = choose_index_type(len(ids), requested)
    if len(ids):
        index, params = build_faiss(vectors, kind)
        atomic_write(index_dir / FAISS_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
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
    write_manifest(index_dir, manifest)
    return manifest


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)
