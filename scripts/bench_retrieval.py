"""Benchmark query-time retrieval; prints JSON.

    python scripts/bench_retrieval.py speech            # speech embedding + search, 3 s and 10 s
    python scripts/bench_retrieval.py search --sizes 10000 100000 1000000

``speech`` writes the published English SONAR speech encoder architecture with random weights
(compute does not depend on the values), builds a 10,000-chunk index through the product's store
and export, and times Retriever.e2e (resampling from 22.05 kHz, embedding, search, reading the
hits) on espeak-ng speech cut to 3 s and 10 s.

``search`` times the faiss index alone at each size, with the index type the product picks
(exact up to 20,000 chunks, IVF above) and optionally the others, and measures recall@10 against
exact search. The vectors are synthetic 1024-d unit vectors drawn around topic centres (SONAR
embeddings are clustered by topic; uniformly random vectors have no neighbourhoods to find), and
the queries are stored vectors with noise added. Vectors are generated in blocks so that a
million of them never exist twice in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 1024
BLOCK = 50_000


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "runs": len(times)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- synthetic clustered vectors ------------------------------------------------------------------


class Clustered:
    """Unit vectors around ``count / 100`` topic centres; block ``b`` is always the same."""

    def __init__(self, count: int, dim: int = DIM, seed: int = 0, spread: float = 0.0255) -> None:
        self.count, self.dim, self.seed, self.spread = count, dim, seed, spread
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((max(10, count // 100), dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)

    def block(self, start: int) -> np.ndarray:
        n = min(BLOCK, self.count - start)
        rng = np.random.default_rng((self.seed, start))
        topics = rng.integers(0, len(self.centres), n)
        x = self.centres[topics] + self.spread * rng.standard_normal((n, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def blocks(self):
        for start in range(0, self.count, BLOCK):
            yield start, self.block(start)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for start, block in self.blocks():
            inside = (rows >= start) & (rows < start + len(block))
            out[inside] = block[rows[inside] - start]
        return out

    def queries(self, n: int, seed: int, noise: float = 0.5) -> np.ndarray:
        rng = np.random.default_rng(seed)
        base = self.rows(rng.choice(self.count, n, replace=False))
        q = base + rng.standard_normal(base.shape, dtype=np.float32) * (noise / np.sqrt(self.dim))
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    def exact_top(self, queries: np.ndarray, k: int) -> np.ndarray:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for start, block in self.blocks():
            s = queries @ block.T
            top = np.argpartition(-s, k, axis=1)[:, :k]
            all_s = np.concatenate([scores, np.take_along_axis(s, top, 1)], 1)
            all_r = np.concatenate([rows, top + start], 1)
            order = np.argsort(-all_s, 1)[:, :k]
            scores, rows = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_r, order, 1)
        return rows


def bench_index_type(data: Clustered, kind: str, n_queries: int) -> dict:
    from voicechat.retrieval import faiss_index

    began = time.perf_counter()
    sample = None
    if kind == "ivf":
        size = faiss_index.training_size(data.count)
        sample = data.rows(np.sort(np.random.default_rng(1).choice(data.count, size, replace=False)))
    index, params = faiss_index.new_faiss_index(kind, data.dim, data.count, sample)
    for _, block in data.blocks():
        index.add(block)
    build_s = time.perf_counter() - began
    if kind != "flat":  # the product's tuning: its own perturbed sample, recall target plus margin
        tuning = data.queries(200, seed=11)
        value, tuned = faiss_index.tune(index, kind, tuning, data.exact_top(tuning, 10))
        params.update({"search_param": value, "tuned_recall_at_10": round(tuned, 4)})
    queries = data.queries(n_queries, seed=23)
    truth = data.exact_top(queries, 10)
    found = np.empty_like(truth)
    times = []
    for i, q in enumerate(queries):
        began = time.perf_counter()
        _, rows = faiss_index.search_index(index, q[None, :], 10)  # as the product searches: one thread
        times.append(time.perf_counter() - began)
        found[i] = rows[0]
    result = {"type": kind, "params": params, "build_s": round(build_s, 2),
              "recall_at_10": round(faiss_index.recall_at_k(found, truth), 4), **percentiles(times),
              "peak_rss_mib": round(peak_rss_mib())}
    del index
    return result


def bench_search(args: argparse.Namespace) -> dict:
    import faiss

    from voicechat.retrieval.faiss_index import choose_index_type

    faiss.omp_set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        data = Clustered(size)
        kinds = [choose_index_type(size)] + [k for k in args.also if k != choose_index_type(size)]
        for kind in kinds:
            n_queries = args.queries if size < 1_000_000 else args.queries_1m
            entry = {"chunks": size, "auto_choice": kind == choose_index_type(size),
                     "queries": n_queries, **bench_index_type(data, kind, n_queries)}
            print(json.dumps(entry), file=sys.stderr)
            results.append(entry)
    return {"benchmark": "search_only", "dim": DIM, "build_threads": args.threads, "search_threads": 1,
            "data": "synthetic clustered unit vectors (count/100 topics), queries = stored vectors + noise",
            "results": results}


# --- speech embedding + search --------------------------------------------------------------------


def speech_audio(seconds: float, rate: int = 22050) -> np.ndarray:
    """espeak-ng reading a long sentence, cut or padded to ``seconds``; noise if espeak-ng is absent."""
    from voicechat.audio.files import read_audio

    text = ("The knowledge folder holds notes about bicycles, coffee, tea and the solar system, and "
            "the assistant answers spoken questions about them quickly and clearly. ") * 3
    target = int(seconds * rate)
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "q.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
            samples, native = read_audio(wav)
        from voicechat.audio.resample import resample, to_mono

        samples = resample(to_mono(samples), native, rate)
    else:
        samples = np.random.default_rng(0).standard_normal(target).astype(np.float32) * 0.1
    samples = np.resize(samples, target) if len(samples) < target else samples[:target]
    return samples.astype(np.float32)


def bench_speech(args: argparse.Namespace) -> dict:
    import torch

    from voicechat.config import ModelSpec, RetrievalConfig
    from voicechat.retrieval.chunking import Chunk, Passage
    from voicechat.retrieval.encoders import SonarSpeechEncoder
    from voicechat.retrieval.index import KnowledgeIndex
    from voicechat.retrieval.indexer import export
    from voicechat.retrieval.retriever import Retriever
    from voicechat.retrieval.store import STORE, Store
    from voicechat.testing.sonar import write_speech_encoder

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-speech-"))
    card = work / "speech_encoder" / "card.yaml"
    if not card.exists():
        write_speech_encoder(card.parent, "full", 0)
    began = time.perf_counter()
    encoder = SonarSpeechEncoder.load(ModelSpec(str(card), device=args.device, dtype=args.dtype), offline=True)
    load_s = time.perf_counter() - began
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    index_dir.mkdir(parents=True)
    store = Store(index_dir / STORE, create=True)
    data = Clustered(args.chunks)
    with store.transaction():
        for start, block in data.blocks():
            for f in range(0, len(block), 10):
                passage = Passage("heading", f"passage {start + f}", 1)
                chunks = [Chunk(f"chunk {start + f + i}", passage, 1, 1) for i in range(min(10, len(block) - f))]
                store.add_file(f"doc-{start + f}.txt", (0, 0, ""), chunks, ["eng_Latn"] * len(chunks),
                               block[f:f + len(chunks)])
        store.set_meta("dim", DIM)
        store.set_meta("settings", {"encoder": {}, "languages": ["eng_Latn"], "chunking": {}})
    export(store, index_dir)
    store.close()
    retriever = Retriever(KnowledgeIndex.open(index_dir), RetrievalConfig(score_threshold=-1.0), speech=encoder)
    out = {"benchmark": "speech_query", "encoder": "SONAR speech encoder, published 'english' architecture, random weights",
           "parameters": sum(p.numel() for p in encoder._pipeline.model.parameters()),
           "device": args.device, "dtype": args.dtype, "torch_threads": args.threads,
           "index_chunks": args.chunks, "index_type": retriever.index.manifest["index"]["type"],
           "input_rate_hz": 22050, "model_load_s": round(load_s, 1), "durations": {}}
    for seconds in args.seconds:
        audio = speech_audio(seconds)
        retriever.e2e(audio, 22050)  # warm-up
        totals, embeds, searches = [], [], []
        for _ in range(args.runs):
            began = time.perf_counter()
            result = retriever.e2e(audio, 22050, k=4)
            totals.append(time.perf_counter() - began)
            embeds.append(result.timings["embed"])
            searches.append(result.timings["search"])
        out["durations"][f"{seconds:g}s"] = {"total": percentiles(totals), "embed": percentiles(embeds),
                                             "search_and_read_hits": percentiles(searches)}
        print(json.dumps(out["durations"][f"{seconds:g}s"]), file=sys.stderr)
    out["peak_rss_mib"] = round(peak_rss_mib())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    speech = sub.add_parser("speech")
    speech.add_argument("--seconds", type=float, nargs="+", default=[3.0, 10.0])
    speech.add_argument("--runs", type=int, default=10)
    speech.add_argument("--chunks", type=int, default=10_000)
    speech.add_argument("--device", default="cpu")
    speech.add_argument("--dtype", default="float32")
    speech.add_argument("--threads", type=int, default=2)
    speech.add_argument("--work", help="folder for the model (kept between runs)")
    search = sub.add_parser("search")
    search.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    search.add_argument("--also", nargs="*", default=[], choices=["flat", "ivf", "hnsw"],
                        help="index types to measure besides the automatic choice")
    search.add_argument("--queries", type=int, default=200)
    search.add_argument("--queries-1m", type=int, default=50)
    search.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = bench_speech(args) if args.what == "speech" else bench_search(args)
    result["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                                   "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
