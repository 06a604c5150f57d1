"""How fast each long-running command stops on Ctrl-C; prints JSON.

Each command runs in a subprocess on the tiny random-weight models (CPU, one torch thread) with
work large enough to keep it busy for many seconds: `ask` (with and without retrieval) and
`search --audio` on a 10-minute recording, `index` of a folder of a few hundred files, `eval` of a few spoken questions,
`tokenize` of the 10-minute recording and `detokenize` of 10 minutes of speech tokens. SIGINT is
sent (as a terminal's Ctrl-C would) one second after the command has started its real work: the
subprocess wraps one function of each command to print a marker when it is first called. The
time from the SIGINT to the process's exit and its exit code (130 expected) are measured.

    python scripts/bench_ctrlc.py [--models DIR] [--repo CHECKOUT] [--only ask,index]

``--repo`` runs the commands of another checkout (an older commit, to compare), with this
script's workloads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.speech import vowels  # noqa: E402
from voicechat.audio.files import write_wav  # noqa: E402

LONG_S = 600.0  # the long recording
INDEX_FILES = 300  # files in the folder that `index` embeds
EVAL_QUESTIONS = 3
DECODE_TOKENS = int(LONG_S * 12.5)
SIGNAL_AFTER_S = 1.0  # after the marker: well inside the work
EXIT_TIMEOUT_S = 180.0  # a command still running then is killed and reported as such
MARKER = "<bench-ctrlc: busy>"

# Runs `voicechat` with one function wrapped to print MARKER on stderr when first called.
CHILD = f"""
import functools, importlib, sys
target, argv = sys.argv[1], sys.argv[2:]
module_name, _, attribute = target.partition(":")
owner_name, _, name = attribute.rpartition(".")
owner = importlib.import_module(module_name)
if owner_name:
    owner = getattr(owner, owner_name)
original = getattr(owner, name)
said = []
@functools.wraps(original)
def marked(*args, **kwargs):
    if not said:
        said.append(1)
        print("\\n{MARKER}", file=sys.stderr, flush=True)
    return original(*args, **kwargs)
setattr(owner, name, marked)
sys.argv = ["voicechat", *argv]
from voicechat.cli import entry_point
entry_point()
"""


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    busy_at: str  # module:Owner.function that starts the long work


def prepare(work: Path, models: Path) -> dict[str, Case]:
    """The workloads: a config over the tiny models, the recordings, folders and token files."""
    generated = yaml.safe_load((models / "config.yaml").read_text(encoding="utf-8"))
    knowledge = work / "knowledge"
    shutil.copytree(REPO / "knowledge", knowledge, ignore=shutil.ignore_patterns(".voicechat-index"))
    config = {
        **generated,
        "retrieval": {"index_dir": str(work / "index"), "knowledge_dir": str(knowledge)},
        "sessions": {"dir": str(work / "sessions")},
        "audio": {"vad": {"max_utterance_s": 600}},  # `ask` takes the 10-minute question
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    # The big folder gets an index of its own: an index serves the one folder it was built for.
    big_config = work / "big-config.yaml"
    big_config.write_text(yaml.safe_dump({**config, "retrieval": {"index_dir": str(work / "big-index")}},
                                         sort_keys=False), encoding="utf-8")

    long_wav, short_wav = work / "long.wav", work / "short.wav"
    write_wav(long_wav, vowels(LONG_S), 16000)
    write_wav(short_wav, vowels(3.0), 16000)
    big = work / "big-folder"
    big.mkdir()
    sample = (REPO / "knowledge" / "solar-system.txt").read_text(encoding="utf-8")
    for number in range(INDEX_FILES):
        (big / f"note-{number:03d}.txt").write_text(f"Note {number}.\n\n{sample}", encoding="utf-8")
    questions = work / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "audio": str(short_wav)}) + "\n"
                                 for i in range(EVAL_QUESTIONS)), encoding="utf-8")
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps(np.random.default_rng(0).integers(0, 16384, DECODE_TOKENS).tolist()))

    base = ["--config", str(path)]
    cases = [
        Case("ask", [*base, "--rag", "e2e", "ask", str(long_wav)], "voicechat.engine:Engine.run_turn"),
        Case("ask_without_retrieval", [*base, "--rag", "off", "ask", str(long_wav)], "voicechat.engine:Engine.run_turn"),
        Case("index", ["--config", str(big_config), "index", str(big), "--rebuild"],
             "voicechat.retrieval.encoders:SonarTextEncoder.embed"),
        Case("eval", [*base, "eval", "folder", str(questions), "--modes", "e2e", "--out", str(work / "eval")],
             "voicechat.engine:Engine.run_turn"),
        Case("search", [*base, "search", "--audio", str(long_wav), "--mode", "e2e"],
             "voicechat.retrieval.retriever:Retriever.retrieve"),
        Case("tokenize", [*base, "tokenize", str(long_wav)], "voicechat.glm.speech_tokenizer:SpeechTokenizer.tokenize"),
        Case("detokenize", [*base, "detokenize", str(tokens), "--out", str(work / "reply.wav")],
             "voicechat.glm.decoder.model:SpeechDecoder.check_tokens"),
    ]
    return {case.name: case for case in cases}


def build_index(case: Case, checkout: Path) -> None:
    """`ask`, `search` and `eval` retrieve from the sample folder's index."""
    config = case.argv[1]
    subprocess.run([sys.executable, "-m", "voicechat", "--config", config, "index"], cwd=checkout,
                   env=child_env(checkout), check=True, capture_output=True)


def child_env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def interrupt(case: Case, checkout: Path) -> dict:
    """Starts the command, sends SIGINT once it is busy, and measures how it ends."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", CHILD, case.busy_at, *case.argv], cwd=checkout,
                               env=child_env(checkout), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    busy = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        for line in process.stderr:
            if line.strip() == MARKER:
                busy.set()
            elif line.strip():
                lines.append(line.rstrip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    while not busy.wait(0.05):
        if process.poll() is not None:
            reader.join()
            return {"error": "exited before it was busy", "exit_code": process.returncode, "stderr": lines[-5:]}
    busy_s = time.monotonic() - started
    if _exited_within(process, SIGNAL_AFTER_S):
        reader.join()
        return {"error": "finished before the SIGINT", "exit_code": process.returncode, "busy_after_s": round(busy_s, 2)}
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        process.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join()
        return {"error": f"still running {EXIT_TIMEOUT_S:.0f} s after the SIGINT (killed)", "busy_after_s": round(busy_s, 2)}
    exit_s = time.monotonic() - sent
    reader.join()
    return {"exit_s": round(exit_s, 3), "exit_code": process.returncode, "busy_after_s": round(busy_s, 2),
            "stderr_lines": len(lines), "last_stderr": lines[-1] if lines else ""}


def _exited_within(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="tiny models written by scripts/make_test_models.py "
                                                    "(default: written into a temporary folder)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose commands run")
    parser.add_argument("--only", help="comma-separated command names")
    args = parser.parse_args()
    checkout = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-ctrlc-") as tmp:
        work = Path(tmp)
        models = args.models
        if models is None:
            from voicechat.testing.generator import generate

            models = work / "models"
            generate(models, "tiny", seed=0)
        cases = prepare(work, models.resolve())
        build_index(cases["ask"], checkout)
        chosen = args.only.split(",") if args.only else list(cases)
        results = {}
        for name in chosen:
            results[name] = interrupt(cases[name], checkout)
            print(f"{name}: {results[name]}", file=sys.stderr)
    times = {name: r["exit_s"] for name, r in results.items() if "exit_s" in r}
    worst = max(times, key=times.get) if times else None
    print(json.dumps({
        "checkout": str(checkout),
        "signal_after_busy_s": SIGNAL_AFTER_S,
        "commands": results,
        "worst": {"command": worst, "exit_s": times[worst]} if worst else None,
        "all_exit_130": all(r.get("exit_code") == 130 for r in results.values()),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
