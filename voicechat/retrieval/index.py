"""The knowledge index of a folder, opened for search.

Layout of the index folder:

- ``store.sqlite``: the chunk store, the source of truth (see ``store.py``).
- ``vectors.faiss``, ``ids.npy`` and ``embeddings.npy``: the search index over the live chunks,
  the chunk id of each row, and the L2-normalised float32 embedding matrix. Rebuilt from the store
  (without the encoder) whenever the store has changed (see ``indexer.py``).
- ``manifest.json``: the folder the index was built for, what the search files hold and were built
  with, written last (see ``manifest.py``).

An index serves the folder it was built for: opened for another folder (two folders sharing one
``retrieval.index_dir``), it is refused, since its answers would come from the other folder. An
index inside its folder (the default ``.voicechat-index``) goes with the folder when it is moved
or copied, and is accepted there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval.faiss_index import read_faiss, search_index
from voicechat.retrieval.manifest import check_artifacts, read_manifest
from voicechat.retrieval.store import STORE, ChunkRecord, Store

DEFAULT_INDEX_FOLDER = ".voicechat-index"
FAISS_FILE = "vectors.faiss"
IDS_FILE = "ids.npy"
EMBEDDINGS_FILE = "embeddings.npy"


def default_index_dir(knowledge_dir: Path) -> Path:
    return knowledge_dir / DEFAULT_INDEX_FOLDER


def check_folder(index_dir: Path, built_for: str | None, folder: Path) -> None:
    """Refuses an index built for another folder than ``folder``. A folder not recorded is unknown
    and accepted (the next update records it); an index inside ``folder`` itself moved or was
    copied with it."""
    if built_for is None or Path(built_for) == folder.resolve():
        return
    if index_dir.resolve() == default_index_dir(folder).resolve():
        return
    raise KnowledgeIndexError.other_folder(index_dir, built_for, folder)


def _recorded_root(store: Store, knowledge_dir: Path | None) -> str | None:
    try:
        return (store.meta("settings") or {}).get("root")
    except sqlite3.DatabaseError as error:
        raise KnowledgeIndexError.corrupt(store.path, error, knowledge_dir or "DIR") from None


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
    def open(cls, index_dir: Path, knowledge_dir: Path | None = None) -> "KnowledgeIndex":
        """The index in ``index_dir``, for searching ``knowledge_dir`` (resolved): an index built
        for another folder is refused. Without ``knowledge_dir`` (a temporary index of the
        evaluation), whatever folder it was built for."""
        manifest = read_manifest(index_dir, knowledge_dir or "DIR")
        if manifest is None and (index_dir / STORE).is_file():  # the manifest is written last
            raise KnowledgeIndexError(
                f"{index_dir}: building this index was interrupted before it finished; "
                f"run `voicechat index {knowledge_dir or 'DIR'}` to finish it")
        if manifest is None:
            raise KnowledgeIndexError(
                f"{index_dir}: no knowledge index here; build it with `voicechat index {knowledge_dir or 'DIR'}`")
        store = Store(index_dir / STORE)
        try:
            built_for = manifest.get("knowledge_dir") or _recorded_root(store, knowledge_dir)
            if knowledge_dir is not None:
                check_folder(index_dir, built_for, knowledge_dir)
            folder = knowledge_dir or built_for or "DIR"
            check_artifacts(index_dir, manifest, folder)
            try:
                ids = np.load(index_dir / IDS_FILE, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise KnowledgeIndexError.damaged(index_dir / IDS_FILE, error, folder) from None
            faiss_index = read_faiss(index_dir / FAISS_FILE, manifest["index"], folder) if len(ids) else None
        except BaseException:
            store.close()
            raise
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
            raise KnowledgeIndexError.corrupt(self._store.path, error) from None

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
