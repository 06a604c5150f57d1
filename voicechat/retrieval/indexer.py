"""Building and updating the index of a knowledge folder: find the files that changed, chunk and
embed them, commit each group to the store as soon as it is embedded, then export the search files
(faiss index, ids, embeddings) and the manifest from the store."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from voicechat.config import ChunkingConfig
from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval.chunking import Chunk, chunk_passages, detect_language
from voicechat.retrieval.corpus import UnreadableFile, discover, read_passages
from voicechat.retrieval.faiss_index import IndexType, build_faiss, choose_index_type, unbuildable
from voicechat.retrieval.index import EMBEDDINGS_FILE, FAISS_FILE, IDS_FILE, check_folder
from voicechat.retrieval.manifest import (
    FORMAT_VERSION, MANIFEST, atomic_write, file_checksums, read_manifest, remove_stale_temporaries, verify_artifacts,
    write_manifest)
from voicechat.retrieval.store import STORE, Store, store_problem

GROUP_CHUNKS = 256  # chunks embedded and committed together
UNFINISHED = "the first build was interrupted before the search files were written"


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
    outside_links: int = 0  # of the skipped: symbolic links out of the knowledge folder
    chunks_embedded: int = 0
    chunks_total: int = 0
    rebuilt_reason: str | None = None
    repaired: str | None = None  # the damage found in the search files, which were rewritten from the store
    exported: bool = False
    index_type: str = ""
    seconds: float = 0.0


@dataclass
class _Pending:
    path: str
    stat: tuple[int, int, str]
    chunks: list[Chunk]
    langs: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """What an update will do, decided before anything is written."""

    pending: list[_Pending] = field(default_factory=list)
    touched: list[tuple[str, int, int]] = field(default_factory=list)  # (path, size, mtime_ns): same bytes
    retire: list[str] = field(default_factory=list)  # deleted or now unreadable
    chunks: int = 0  # live chunks once the update is done


@dataclass(frozen=True)
class Checkup:
    """What `update` would do about the index itself (not about changed documents), found without
    embedding or writing anything; `voicechat doctor` shows it. ``action``: none; build (no index
    yet); refuse (``detail`` is the one-line error `update` raises); reembed (settings changed:
    every file is embedded again); repair (damaged search files are rewritten from the store);
    refresh (intact but outdated search files are rewritten from the store)."""

    action: str
    detail: str = ""


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
        """Refusals (a damaged store, another folder's index, an index type the folder is too small
        for) come before anything is written."""
        began = time.perf_counter()
        if not self.root.is_dir():
            raise KnowledgeIndexError(f"{self.root}: no such knowledge folder")
        report = UpdateReport()
        store = self._open_store(rebuild, report)
        try:
            rebuild_reason = self._rebuild_reason(store, rebuild)
            files, skipped = discover(self.root, exclude=self.index_dir)
            for item in skipped:
                self.reporter.skipped(item.path, item.reason)
            report.skipped += len(skipped)
            report.outside_links += sum(item.outside for item in skipped)
            keep = store is not None and rebuild_reason is None
            plan = self._plan(store.files() if keep else {}, store.file_chunks() if keep else {}, files, report)
            self._check_index_type(plan.chunks)
            if store is None:
                self.index_dir.mkdir(parents=True, exist_ok=True)
                store = Store(self.index_dir / STORE, create=True)
            removed = remove_stale_temporaries(self.index_dir, (FAISS_FILE, IDS_FILE, EMBEDDINGS_FILE, MANIFEST))
            if removed:
                noun = "file" if len(removed) == 1 else "files"
                self.reporter.note(f"removed {len(removed)} temporary {noun} left by an interrupted run")
            self._record_settings(store, rebuild_reason, report)
            self._apply(store, plan)
            self._embed_and_store(store, plan.pending, report)
            report.chunks_total = store.live_count()
            self._export_if_needed(store, report)
        finally:
            if store is not None:
                store.close()
        report.seconds = time.perf_counter() - began
        return report

    def checkup(self) -> Checkup:
        """The checks `update` makes before embedding, in the same order, without writing."""
        path = self.index_dir / STORE
        if not path.is_file():
            return Checkup("build", f"no index for {self.root}")
        try:
            store = self._open_store(rebuild=False)
        except KnowledgeIndexError as error:
            return Checkup("refuse", str(error))
        try:
            reason = self._rebuild_reason(store, rebuild=False)
            if reason:
                return Checkup("reembed", reason)
            problem = self._index_type_problem(store.live_count())
            if problem:
                return Checkup("refuse", problem)
            damage, stale = self._export_reasons(store)
            if damage:
                return Checkup("repair", damage)
            return Checkup("refresh", stale) if stale else Checkup("none")
        finally:
            store.close()

    # steps

    def _open_store(self, rebuild: bool, report: UpdateReport | None = None) -> Store | None:
        """The store, checked; None when there is none yet (or a damaged one was removed for a
        rebuild). Another folder's store is refused unless rebuilding."""
        path = self.index_dir / STORE
        if not path.is_file():
            return None
        problem = store_problem(path)
        if problem and not rebuild:
            raise KnowledgeIndexError.corrupt(path, problem, self.root)
        if problem:
            for name in (STORE, STORE + "-wal", STORE + "-shm", MANIFEST):
                (self.index_dir / name).unlink(missing_ok=True)
            if report is not None:
                report.rebuilt_reason = f"the index store was damaged ({problem})"
            self.reporter.note(f"rebuilding: {report.rebuilt_reason if report else problem}")
            return None
        store = Store(path)
        built_for = (store.meta("settings") or {}).get("root")
        if not rebuild and built_for not in (None, str(self.root)):
            try:
                check_folder(self.index_dir, built_for, self.root)
            except KnowledgeIndexError:
                store.close()
                raise
            self.reporter.note(f"the knowledge folder moved here from {built_for}")
        return store

    def _rebuild_reason(self, store: Store | None, rebuild: bool) -> str | None:
        """Why every file must be embedded again, or None."""
        if rebuild:
            return "requested with --rebuild"
        if store is None:
            return None
        stored = store.meta("settings")
        if stored is None:
            return "the index has no recorded settings" if store.files() else None
        return explain_change(stored, self.settings.as_json())

    def _record_settings(self, store: Store, reason: str | None, report: UpdateReport) -> None:
        if reason:
            report.rebuilt_reason = report.rebuilt_reason or reason
            self.reporter.note(f"rebuilding the whole index: {reason}")
        with store.transaction():
            if reason:
                store.reset()
                store.bump_generation()
            store.set_meta("settings", {**self.settings.as_json(), "root": str(self.root)})
            store.set_meta("format_version", FORMAT_VERSION)

    def _plan(self, known: dict[str, tuple[int, int, str]], known_chunks: dict[str, int], files: list[Path],
              report: UpdateReport) -> _Plan:
        """What to embed, touch and retire, given the files the store knows; writes nothing."""
        plan = _Plan()
        seen: set[str] = set()
        report.files = len(files)
        for path in files:
            rel = path.relative_to(self.root).as_posix()
            path = path.resolve()  # read where it is, checked once more to be inside the folder
            if not path.is_relative_to(self.root):
                self.reporter.skipped(rel, f"symbolic link to {path}, outside the knowledge folder")
                report.skipped += 1
                report.outside_links += 1
                continue
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
                plan.chunks += known_chunks[rel]
                continue
            try:
                digest = sha256_file(path)
            except OSError as error:
                self.reporter.skipped(rel, f"cannot read ({error.strerror})")
                report.skipped += 1
                continue
            stat = (info.st_size, info.st_mtime_ns, digest)
            if previous and previous[2] == digest:  # touched, not changed
                plan.touched.append((rel, info.st_size, info.st_mtime_ns))
                report.unchanged += 1
                plan.chunks += known_chunks[rel]
                continue
            try:
                chunks = chunk_passages(read_passages(path), self.settings.chunking)
            except UnreadableFile as error:
                self.reporter.skipped(rel, str(error))
                report.skipped += 1
                if previous:
                    plan.retire.append(rel)
                continue
            if previous:
                report.changed += 1
            else:
                report.added += 1
            langs = [detect_language(c.text, self.settings.languages) for c in chunks]
            plan.pending.append(_Pending(rel, stat, chunks, langs))
            plan.chunks += len(chunks)
        gone = [rel for rel in known if rel not in seen]
        plan.retire.extend(gone)
        report.deleted = len(gone)
        return plan

    def _check_index_type(self, chunks: int) -> None:
        problem = self._index_type_problem(chunks)
        if problem:
            raise KnowledgeIndexError(problem)

    def _index_type_problem(self, chunks: int) -> str | None:
        reason = unbuildable(self.index_type, chunks)
        return f"{self.root}: {reason}" if reason else None

    def _apply(self, store: Store, plan: _Plan) -> None:
        if not plan.touched and not plan.retire:
            return
        with store.transaction():
            for rel, size, mtime in plan.touched:
                store.db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime, rel))
            for rel in plan.retire:
                store.retire_file(rel)
            if plan.retire:
                store.bump_generation()

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
        damage, stale = self._export_reasons(store)
        if not damage and not stale:
            report.index_type = read_manifest(self.index_dir)["index"]["type"]
            return
        if damage:
            report.repaired = damage
            self.reporter.note(f"repairing the search files from the index store: {damage}")
        else:
            self.reporter.note("writing the search index")
        export(store, self.index_dir, self.index_type)
        store.purge_dead()
        report.exported = True
        report.index_type = read_manifest(self.index_dir)["index"]["type"]

    def _export_reasons(self, store: Store) -> tuple[str | None, str | None]:
        """(damage, staleness): why the search files must be written again from the store. Damage
        is found only in files that would otherwise be kept, by reading them whole."""
        try:
            manifest = read_manifest(self.index_dir)
        except KnowledgeIndexError:
            return f"{MANIFEST}: the file is unreadable", None
        if manifest is None:
            return None, UNFINISHED
        if manifest["format_version"] != FORMAT_VERSION:
            return None, f"the search files were written by an earlier version (format {manifest['format_version']})"
        if manifest.get("generation") != int(store.meta("generation", 0)):
            return None, "the store has changed since the search files were written"
        if manifest["index"].get("requested", "auto") != self.index_type:
            return None, f"index type {self.index_type} is requested"
        if manifest.get("knowledge_dir") != str(self.root):
            return None, f"the knowledge folder is now {self.root}"
        return search_files_damage(self.index_dir, manifest), None


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
    artifacts = {name: file_checksums(index_dir / name)
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


def search_files_damage(index_dir: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with the exported files, or None: each is checked whole against the size and
    SHA-256 the manifest recorded, and the arrays against the manifest's chunk count and dimension."""
    chunks = int(manifest.get("chunks", 0))
    required = (IDS_FILE, EMBEDDINGS_FILE) + ((FAISS_FILE,) if chunks else ())
    problem = verify_artifacts(index_dir, manifest, required)
    if problem:
        return problem
    for name, shape in ((IDS_FILE, (chunks,)), (EMBEDDINGS_FILE, (chunks, int(manifest.get("dim", 0))))):
        try:
            array = np.load(index_dir / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return f"{name}: the file is unreadable ({error})"
        if array.shape != shape:
            return f"{name}: the file holds an array of shape {array.shape}, the manifest says {shape}"
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)
