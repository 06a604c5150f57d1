"""Benchmark the streaming speech decoder: real-time factor and per-chunk latency along a long reply.

    python scripts/bench_decoder.py                       # full-size random weights, CPU
    python scripts/bench_decoder.py --model DIR --device cuda

One reply of --tokens speech tokens is pushed one token at a time (as fast as the decoder takes them,
so the figures are the decoder's own compute). Printed as JSON: per chunk its end position, size, the
flow window, flow and vocoder seconds and the audio it released; the real-time factor at several
reply lengths; and the time from the first speech token to the first audio sample (the compute after
the tenth token arrives; add the language model's time to produce ten tokens for the user's wait).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="decoder folder (default: write full-size random weights)")
    parser.add_argument("--size", choices=["tiny", "full"], default="full", help="size of generated weights")
    parser.add_argument("--tokens", type=int, default=600, help="reply length in speech tokens")
    parser.add_argument("--lengths", default="10,50,100,200,400,600", help="reply lengths to report RTF at")
    parser.add_argument("--chunks", default="10,25,50,100", help="chunk schedule")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a shared 2-core machine, 2 threads ran far slower than 1)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from voicechat.config import DecoderConfig
    from voicechat.glm.decoder import SpeechDecoder

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            from voicechat.testing import decoder as writer

            folder = Path(writer.write(Path(tmp), args.size, seed=0)["models"]["decoder"]["source"])
        decoder = SpeechDecoder.from_pretrained(folder, device=args.device, dtype=args.dtype)

    timers = {"flow": 0.0, "vocoder": 0.0}

    def timed(name, function):
        def wrapper(*a, **k):
            _sync(args.device)
            start = time.perf_counter()
            result = function(*a, **k)
            _sync(args.device)
            timers[name] += time.perf_counter() - start
            return result
        return wrapper

    windows: list[int] = []
    real_mel = decoder.mel

    def mel(tokens, *a, **k):
        windows.append(int(tokens.shape[1]))
        return real_mel(tokens, *a, **k)

    decoder.mel = timed("flow", mel)
    decoder.vocode = timed("vocoder", decoder.vocode)

    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, decoder.files.flow.vocab_size, args.tokens)]
    schedule = tuple(int(n) for n in args.chunks.split(","))
    session = decoder.session(DecoderConfig(chunk_schedule=schedule))
    warm = decoder.session(DecoderConfig(chunk_schedule=schedule))  # first calls pay one-off setup costs
    warm.push(tokens[:schedule[0]])
    warm.finish()
    timers.update(flow=0.0, vocoder=0.0)
    windows.clear()

    chunks, audio_samples, compute, checkpoints = [], 0, 0.0, {}
    lengths = sorted(int(n) for n in args.lengths.split(",") if int(n) <= args.tokens)
    first_audio_s = None
    for count, token in enumerate(tokens, start=1):
        before = dict(timers)
        start = time.perf_counter()
        piece = session.push([token]) if count < len(tokens) else np.concatenate([session.push([token]), session.finish()])
        spent = time.perf_counter() - start
        compute += spent
        audio_samples += len(piece)
        if len(piece) and first_audio_s is None:
            first_audio_s = spent
        if spent > 0.01 or len(piece):
            print(f"chunk ending at token {count}: {spent:.2f} s", file=sys.stderr)
            chunks.append({
                "end_token": count,
                "window_tokens": windows[-1] if windows else 0,
                "flow_s": round(timers["flow"] - before["flow"], 3),
                "vocoder_s": round(timers["vocoder"] - before["vocoder"], 3),
                "total_s": round(spent, 3),
                "audio_s": round(len(piece) / decoder.sample_rate, 3),
            })
        if count in lengths:
            checkpoints[count] = (compute, audio_samples)

    total_audio = audio_samples / decoder.sample_rate
    result = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                            f"{args.threads} threads)",
        "dtype": args.dtype,
        "weights": str(args.model) if args.model else f"random, {args.size} size (published architecture)"
        if args.size == "full" else "random, tiny",
        "chunk_schedule": list(schedule),
        "reply_tokens": args.tokens,
        "first_audio_after_10th_token_s": round(first_audio_s or 0.0, 3),
        "rtf_by_reply_length": {
            str(n): {"audio_s_released": round(samples / decoder.sample_rate, 2), "compute_s": round(c, 2),
                     "rtf": round(c / max(samples / decoder.sample_rate, 1e-9), 3)}
            for n, (c, samples) in checkpoints.items()
        },
        "overall": {"audio_s": round(total_audio, 2), "compute_s": round(compute, 2),
                    "rtf": round(compute / max(total_audio, 1e-9), 3),
                    "flow_s": round(timers["flow"], 2), "vocoder_s": round(timers["vocoder"], 2)},
        "chunks": chunks,
    }
    print(json.dumps(result, indent=1))
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
