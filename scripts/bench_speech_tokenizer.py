"""Speech tokenizer latency with the full-size architecture (random weights unless --model is given).

    python scripts/bench_speech_tokenizer.py [--model DIR] [--device auto] [--dtype auto]

Prints JSON: load time, then for 2, 5 and 15 s of speech the time of one `tokenize` call after a
warm-up (median, min, max over --repeats) and its real-time factor, then batched throughput.
Compute does not depend on the weight values, so random weights give the real model's timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="tokenizer folder (default: write a random full-size one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 15.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="utterances of 5 s in the batched run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or _random_full_size(Path(scratch))
        report = bench(folder, args)
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    report["model"] = str(args.model) if args.model else "random full-size (generated)"
    print(json.dumps(report, indent=2))
    return 0


def _random_full_size(scratch: Path) -> Path:
    from voicechat.testing.speech_tokenizer import write

    return Path(write(scratch, "full", seed=0)["models"]["speech_tokenizer"]["source"])


def bench(folder: Path, args: argparse.Namespace) -> dict:
    import torch

    from voicechat.glm.speech_tokenizer import SpeechTokenizer
    from voicechat.testing.speech_tokenizer import synthetic_speech

    started = time.perf_counter()
    tokenizer = SpeechTokenizer.from_pretrained(folder, args.device, args.dtype)
    loaded = time.perf_counter()
    tokenizer.warm_up()
    warmed = time.perf_counter()
    rate = tokenizer.sample_rate
    report: dict = {
        "device": str(tokenizer.device),
        "device_name": _device_name(tokenizer.device),
        "dtype": str(tokenizer.model.conv1.weight.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "parameters": sum(p.numel() for p in tokenizer.model.parameters()),
        "load_seconds": round(loaded - started, 3),
        "warm_up_seconds": round(warmed - loaded, 3),
        "latency": [],
    }
    for seconds in args.seconds:
        audio = synthetic_speech(seconds, rate)
        times, tokens = [], []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            tokens = tokenizer.tokenize(audio, rate)
            _sync(tokenizer.device)
            times.append(time.perf_counter() - begin)
        median = statistics.median(times)
        report["latency"].append({
            "audio_seconds": seconds,
            "tokens": len(tokens),
            "median_seconds": round(median, 4),
            "min_seconds": round(min(times), 4),
            "max_seconds": round(max(times), 4),
            "real_time_factor": round(median / seconds, 4),
        })
    if args.batch:
        utterances = [(synthetic_speech(5.0, rate), rate)] * args.batch
        begin = time.perf_counter()
        tokenizer.tokenize_batch(utterances, batch_windows=args.batch)
        _sync(tokenizer.device)
        elapsed = time.perf_counter() - begin
        report["batch"] = {
            "utterances": args.batch,
            "audio_seconds": 5.0 * args.batch,
            "seconds": round(elapsed, 3),
            "audio_seconds_per_second": round(5.0 * args.batch / elapsed, 2),
        }
    return report


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
