"""Benchmark retrieval time per evaluation mode and question length; prints JSON.

    python scripts/bench_eval.py                     # tiny random encoders, quick
    python scripts/bench_eval.py --size full         # the published architectures, random weights

Writes the SONAR text and speech encoders and the Whisper recogniser with random weights
(``--size full``: the published architectures; compute does not depend on the values), builds one
question's index of ten passages the way `voicechat eval` does, and times the retriever per mode
on espeak-ng questions of several lengths: e2e (speech encoder + search), asr (Whisper + text
encoder + search) and text (gold text + text encoder + search). It reports the median time per
mode and length and the asr / e2e ratio (the study reported about 4x).

A random-weight Whisper rarely emits its end token and would decode up to its limit of 200 tokens;
a trained one stops after the question's tokens. So Whisper is capped at the gold question's
token count (about 1.3 per English word) plus its end token (``asr_whisper``: the decoding steps
a trained model takes), and since its random transcript says nothing, the asr retrieval time is
that plus the text mode's embedding and search of the gold question (``asr``). The study reported asr / e2e of about 4x.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = {
    "short": "Who painted the Mona Lisa?",
    "medium": "Which river flows through the capital city of the country where the Eiffel Tower was built?",
    "long": ("The composer of the opera that premiered in Vienna in seventeen eighty six was born in which city, "
             "and in which year did the first public concert in that city take place, according to its records?"),
}
PASSAGES = [f"Passage {i}: the archive records that event number {i} happened in the city of Example{i} "
            f"in the year {1800 + 7 * i}, and the report was written by the local historian." for i in range(10)]


def speak(text: str) -> np.ndarray:
    from voicechat.audio.files import read_audio
    from voicechat.audio.resample import to_model_input

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to speak the benchmark questions")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True, capture_output=True)
        samples, rate = read_audio(wav)
    return to_model_input(samples, rate)


def whisper_tokens(text: str) -> int:
    """Decoding steps a trained Whisper takes for an English transcript: its multilingual BPE
    gives about 1.3 tokens per word, plus the end token. (The test models' tokenizer is bytes
    only, so its counts would be several times too high.)"""
    return math.ceil(1.3 * len(text.split())) + 1


def timed(call, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - began)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="short,medium,long")
    parser.add_argument("--work", type=Path, help="folder for the written models (kept for reuse)")
    args = parser.parse_args()

    import torch

    from voicechat.config import load_config
    from voicechat.evaluation.datasets import Doc, Question
    from voicechat.evaluation.runner import Scopes, load_encoders
    from voicechat.testing.generator import generate

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-eval-"))
    began = time.perf_counter()
    if not (work / "config.yaml").exists():
        generate(work, args.size, seed=0, only=["sonar", "asr"])
    write_s = time.perf_counter() - began
    overrides = {f"models.{name}.device": args.device for name in ("sonar_text", "sonar_speech", "asr")}
    overrides.update({f"models.{name}.dtype": args.dtype for name in ("sonar_text", "sonar_speech", "asr")})
    config = load_config(work / "config.yaml", overrides)
    began = time.perf_counter()
    text, speech, transcriber = load_encoders(config, ["e2e", "asr"])
    load_s = time.perf_counter() - began
    question = Question("bench", QUESTIONS["medium"], (("x",),),
                        tuple(Doc(str(i), "", p, i == 0) for i, p in enumerate(PASSAGES)), "en")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        retriever = Scopes(config, text, speech, transcriber, top_k=4).build([question], Path(tmp))
        try:
            for length in args.lengths.split(","):
                gold = QUESTIONS[length]
                audio = speak(gold)
                retriever.e2e(audio, 16000)  # warm-up
                e2e, _ = timed(lambda: retriever.e2e(audio, 16000), args.repeats)
                transcriber.max_new_tokens = whisper_tokens(gold)
                whisper, _ = timed(lambda: transcriber.transcribe(audio), args.repeats)
                txt, _ = timed(lambda: retriever.text(gold), args.repeats)
                p50 = {mode: round(float(np.median(t)) * 1000, 1) for mode, t in (("e2e", e2e), ("text", txt))}
                p50["asr_whisper"] = round(float(np.median(whisper)) * 1000, 1)
                p50["asr"] = round(p50["asr_whisper"] + p50["text"], 1)
                entry = {"length": length, "audio_s": round(audio.size / 16000, 2), "words": len(gold.split()),
                         "whisper_tokens": transcriber.max_new_tokens,
                         "retrieval_ms_p50": p50, "asr_over_e2e": round(p50["asr"] / p50["e2e"], 2)}
                print(json.dumps(entry), file=sys.stderr)
                results.append(entry)
        finally:
            retriever.index.close()
    print(json.dumps({
        "benchmark": "eval_retrieval_per_mode", "size": args.size, "device": args.device, "dtype": args.dtype,
        "torch_threads": args.threads, "repeats": args.repeats, "cpu": platform.processor() or platform.machine(),
        "write_models_s": round(write_s, 1), "load_encoders_s": round(load_s, 1), "results": results,
        "note": "random weights: Whisper is capped at the gold question's token count; asr = that + text-mode embedding and search",
    }, indent=1))


if __name__ == "__main__":
    main()
