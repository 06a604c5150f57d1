"""Faiss indexes over unit vectors (inner product = cosine): choosing a type for the collection's
size, building it and tuning its search parameter to a recall target, searching, reading it back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voicechat.errors import KnowledgeIndexError

IndexType = Literal["auto", "flat", "hnsw", "ivf"]
FLAT_MAX_CHUNKS = 20_000  # exact search scans 80 MB per query here: ~15 ms; above, IVF
TARGET_RECALL = 0.95
TUNING_MARGIN = 0.03  # tune to 0.98 on the sample so that the target holds on unseen queries


IVF_MIN_LISTS = 16
IVF_MIN_CHUNKS = 40 * IVF_MIN_LISTS  # 40 training vectors per list (faiss warns below 39)


def unbuildable(requested: str, count: int) -> str | None:
    """Why an index of the requested type cannot be built over ``count`` chunks, or None. Flat and
    HNSW need no training and are built at any size; IVF trains its lists on the vectors."""
    if requested == "ivf" and count < IVF_MIN_CHUNKS:
        return (f"an ivf index needs at least {IVF_MIN_CHUNKS} chunks to train its {IVF_MIN_LISTS} lists and this "
                f"folder has {count}; use --index-type auto, flat or hnsw")
    return None


def choose_index_type(count: int, requested: IndexType = "auto") -> str:
    if requested != "auto":
        return requested
    return "flat" if count <= FLAT_MAX_CHUNKS else "ivf"


def build_faiss(vectors: np.ndarray, kind: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``vectors`` (rows are unit vectors; inner product = cosine). Approximate
    indexes are tuned on a sample of perturbed stored vectors until recall@10 against exact
    search reaches the target plus a margin."""
    count, dim = vectors.shape
    problem = unbuildable(kind, count)
    if problem:
        raise KnowledgeIndexError(problem)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(count, size=min(count, training_size(count)), replace=False))]
    index, params = new_faiss_index(kind, dim, count, sample)
    for start in range(0, count, 65536):
        index.add(np.ascontiguousarray(vectors[start:start + 65536]))
    if kind != "flat":
        queries = tuning_queries(vectors, seed)
        truth = exact_search(vectors, queries, min(10, count))
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


def read_faiss(path: Path, params: dict[str, Any], folder: object = "DIR") -> Any:
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise KnowledgeIndexError.damaged(path, str(error).splitlines()[-1][-120:], folder) from None
    if "search_param" in params:
        set_search_param(index, params["type"], int(params["search_param"]))
    return index
