"""Benchmark index building and re-indexing; prints JSON.

    python scripts/bench_index.py build --chunks 300        # full-size text encoder architecture
    python scripts/bench_index.py reindex --files 1000      # unchanged-folder re-index time

``build`` writes the published text encoder architecture (24 layers, 1024 dims, 256k vocabulary)
with random weights (compute does not depend on the values) and indexes a generated folder of
English text whose words are whole tokenizer pieces, so token counts per chunk are close to the
real tokenizer's. ``reindex`` indexes a folder of small files with the tiny encoder, then times a
second run over the unchanged folder, in process and as a fresh `voicechat index` process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_corpus(folder: Path, files: int, sentences_per_file: int, seed: int = 0) -> None:
    from voicechat.testing.sonar import COMMON_WORDS

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        paragraphs = []
        for _ in range(max(1, sentences_per_file // 4)):
            sentences = []
            for _ in range(4):
                words = [rng.choice(COMMON_WORDS) for _ in range(rng.randint(8, 22))]
                sentences.append(" ".join(words).capitalize() + ".")
            paragraphs.append(" ".join(sentences))
        (folder / f"doc-{f:05d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_build(args: argparse.Namespace) -> dict:
    import torch

    from voicechat.config import ChunkingConfig, ModelSpec
    from voicechat.retrieval.encoders import SonarTextEncoder, encoder_identity
    from voicechat.retrieval.indexer import Indexer, Settings
    from voicechat.testing.sonar import write_text_encoder

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-index-"))
    card = work / "text_encoder" / "card.yaml"
    began = time.perf_counter()
    if not card.exists():
        write_text_encoder(card.parent, "full", 0)
    written = time.perf_counter() - began
    spec = ModelSpec(str(card), device=args.device, dtype=args.dtype)
    rss_before_load = peak_rss_mib()
    began = time.perf_counter()
    encoder = SonarTextEncoder.load(spec, offline=True, batch_size=args.batch_size)
    load_s = time.perf_counter() - began
    sentences_per_file = 8
    files = max(1, args.chunks // sentences_per_file)  # 2-sentence windows, overlap 1: ~1 chunk/sentence
    corpus = work / "corpus"
    make_corpus(corpus, files, sentences_per_file)
    settings = Settings(encoder_identity(spec), ("eng_Latn",), ChunkingConfig())
    indexer = Indexer(corpus, work / "index", settings, lambda: encoder)
    began = time.perf_counter()
    report = indexer.update(rebuild=True)
    build_s = time.perf_counter() - began
    tokenizer = encoder._pipeline.tokenizer.create_encoder(lang="eng_Latn")
    import sqlite3

    texts = [row[0] for row in sqlite3.connect(work / "index" / "store.sqlite").execute(
        "SELECT text FROM chunks WHERE live = 1")]
    tokens = sum(len(tokenizer(t)) for t in texts) / max(1, len(texts))
    return {
        "benchmark": "index_build",
        "encoder": "SONAR text encoder, published 'basic' architecture, random weights",
        "parameters": sum(p.numel() for p in encoder._pipeline.model.parameters()),
        "device": args.device, "dtype": args.dtype, "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "files": report.files, "chunks": report.chunks_embedded,
        "mean_tokens_per_chunk": round(tokens, 1),
        "model_write_s": round(written, 1), "model_load_s": round(load_s, 1),
        "build_s": round(build_s, 2),
        "chunks_per_s": round(report.chunks_embedded / build_s, 2),
        "peak_rss_mib_before_load": round(rss_before_load),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def bench_reindex(args: argparse.Namespace) -> dict:
    import torch
    import yaml

    from voicechat.config import ChunkingConfig, ModelSpec
    from voicechat.retrieval.encoders import SonarTextEncoder, encoder_identity
    from voicechat.retrieval.indexer import Indexer, Settings
    from voicechat.testing import sonar

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    sonar.write(work / "models", "tiny", 0)
    card = work / "models" / "sonar" / "text_encoder" / "card.yaml"
    spec = ModelSpec(str(card), device="cpu")
    corpus = work / "corpus"
    make_corpus(corpus, args.files, 4)
    settings = Settings(encoder_identity(spec), ("eng_Latn", "zho_Hans"), ChunkingConfig())
    encoder = SonarTextEncoder.load(spec, offline=True)
    began = time.perf_counter()
    Indexer(corpus, corpus / ".voicechat-index", settings, lambda: encoder).update()
    first_s = time.perf_counter() - began
    loads = []

    def load():
        loads.append(1)
        return encoder

    times = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        report = Indexer(corpus, corpus / ".voicechat-index", settings, load).update()
        times.append(time.perf_counter() - began)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"models": {"sonar_text": {"source": str(card), "device": "cpu"}},
                                      "offline": True}))
    cli = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "voicechat", "--config", str(config), "index", str(corpus)],
                       cwd=REPO, check=True, capture_output=True)
        cli.append(time.perf_counter() - began)
    return {
        "benchmark": "reindex_unchanged",
        "files": report.files, "chunks": report.chunks_total,
        "first_build_s_tiny_encoder": round(first_s, 2),
        "reindex_in_process_s": {"min": round(min(times), 4), "median": round(sorted(times)[len(times) // 2], 4)},
        "reindex_cli_process_s": {"min": round(min(cli), 3), "median": round(sorted(cli)[len(cli) // 2], 3)},
        "encoder_loaded": bool(loads),
        "chunks_reembedded": report.chunks_embedded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    build = sub.add_parser("build")
    build.add_argument("--chunks", type=int, default=300)
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--device", default="cpu")
    build.add_argument("--dtype", default="float32")
    build.add_argument("--threads", type=int, default=2)
    build.add_argument("--work", help="folder for the model and corpus (kept between runs)")
    reindex = sub.add_parser("reindex")
    reindex.add_argument("--files", type=int, default=1000)
    reindex.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = bench_build(args) if args.what == "build" else bench_reindex(args)
    result["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                                   "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
