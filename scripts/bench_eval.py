"""Benchmark retrieval time per evaluation mode and question length; prints JSON.

    python scripts/bench_eval.py                     # tiny random encoders, quick
    python scripts/bench_eval.py --size full         # the published architectures, random weights

Writes the SONAR text and speech encoders and the Whisper recogniser with random weights
(``--size full``: the published architectures; compute does not depend on the values), builds one
question's index of ten passages the way `voicechat eval` does, and times the retriever per mode
on espeak-ng questions of several lengths: e2e (speech encoder + search), asr (Whisper + text
encoder + search) and text (gold text + text encoder + search). It reports the median time per
mode and length and the asr / e2e ratio (the study reported about 4x).

Caveat: a random-weight Whisper rarely emits its end token, so it decodes up to its limit of 200
tokens; a trained one stops after the question's few dozen tokens, so the asr figures are an upper
bound. Its transcript is often empty (special tokens only), and an empty transcript is not
embedded or searched; the transcript's word count is reported beside the asr times.
"""

from __future__ import annotations

import argparse
import json
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
                asr, heard = timed(lambda: retriever.asr(audio, 16000), args.repeats)
                txt, _ = timed(lambda: retriever.text(gold), args.repeats)
                p50 = {mode: round(float(np.median(t)) * 1000, 1) for mode, t in (("e2e", e2e), ("asr", asr), ("text", txt))}
                entry = {"length": length, "audio_s": round(audio.size / 16000, 2), "words": len(gold.split()),
                         "retrieval_ms_p50": p50, "asr_over_e2e": round(p50["asr"] / p50["e2e"], 2),
                         "asr_stage_ms_last": {k: round(v * 1000, 1) for k, v in heard.timings.items()},
                         "asr_transcript_words": len((heard.query_text or "").split())}
                print(json.dumps(entry), file=sys.stderr)
                results.append(entry)
        finally:
            retriever.index.close()
    print(json.dumps({
        "benchmark": "eval_retrieval_per_mode", "size": args.size, "device": args.device, "dtype": args.dtype,
        "torch_threads": args.threads, "repeats": args.repeats, "cpu": platform.processor() or platform.machine(),
        "write_models_s": round(write_s, 1), "load_encoders_s": round(load_s, 1), "results": results,
        "note": "random weights: Whisper decodes to its 200-token limit, so asr times are an upper bound; an empty transcript skips embedding and search",
    }, indent=1))


if __name__ == "__main__":
    main()
