"""Benchmark `voicechat index` with 1 and 2 PyTorch threads, on an idle machine and while another
process keeps one core busy; prints JSON.

    python scripts/bench_index_threads.py                 # 200 files, 3 runs per setting
    python scripts/bench_index_threads.py --files 50 --repeat 1

Each run is a fresh `voicechat --threads N index DIR` process over a generated folder of English
text files, with the tiny SONAR text encoder of the test-model generator, into an empty index
folder: encoder load, chunking, embedding and export. ``index_s`` is the time the command reports
(from the start of indexing to the written index), of which ``encoder_load_s`` loading the text
encoder (importing fairseq2 and SONAR included); ``process_s`` also counts starting Python. The busy core is a second process spinning in a loop, started before the run
and stopped after it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_index import make_corpus  # noqa: E402  (beside this script)

SUMMARY_SECONDS = re.compile(r" index, ([0-9.]+) s$")
LOAD_SECONDS = re.compile(r"^loaded the text encoder in ([0-9.]+) s$", re.MULTILINE)


def write_config(work: Path) -> Path:
    import yaml

    from voicechat.testing.sonar import write_text_encoder

    card = write_text_encoder(work / "sonar" / "text_encoder", "tiny", 0)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"models": {"sonar_text": {"source": str(card), "device": "cpu"}},
                                      "retrieval": {"index_dir": "index"}, "offline": True}))
    return config


def index_once(config: Path, corpus: Path, threads: int) -> tuple[float, float, float, str]:
    shutil.rmtree(config.parent / "index", ignore_errors=True)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "voicechat", "--config", str(config), "--threads", str(threads),
                           "index", str(corpus)], cwd=REPO, capture_output=True, text=True, check=True)
    process_s = time.perf_counter() - began
    summary = done.stdout.strip().splitlines()[-1]
    load_s = float(LOAD_SECONDS.search(done.stderr).group(1))
    return float(SUMMARY_SECONDS.search(summary).group(1)), load_s, process_s, summary


def busy_core() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--sentences", type=int, default=12, help="sentences per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-index-threads-"))
    try:
        config = write_config(work)
        corpus = work / "corpus"
        make_corpus(corpus, args.files, args.sentences)
        load_before = os.getloadavg()
        runs = []
        summary = ""
        for busy in (False, True):
            for threads in (int(t) for t in args.threads.split(",")):
                index_s, load_s, process_s = [], [], []
                for _ in range(args.repeat):
                    spinner = busy_core() if busy else None
                    try:
                        seconds, loading, wall, summary = index_once(config, corpus, threads)
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    index_s.append(round(seconds, 2))
                    load_s.append(round(loading, 2))
                    process_s.append(round(wall, 2))
                runs.append({"threads": threads, "busy_core": busy,
                             "index_s": index_s, "median_index_s": statistics.median(index_s),
                             "encoder_load_s": load_s, "median_encoder_load_s": statistics.median(load_s),
                             "process_s": process_s, "median_process_s": round(statistics.median(process_s), 2)})
        chunks = int(re.search(r"(\d+) chunks", summary).group(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    print(json.dumps({
        "benchmark": "index_build_threads",
        "encoder": "tiny SONAR text encoder (voicechat.testing.sonar, random weights), CPU",
        "files": args.files, "chunks": chunks, "repeat": args.repeat,
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "runs": runs,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
