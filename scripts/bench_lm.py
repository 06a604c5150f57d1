"""Language-model streaming benchmark: time to first token and first speech token, tokens/s.

For prompts of 200 / 1,000 / 4,000 tokens (a speech question of that length), per backend:
local (in process), glm-server (`voicechat serve`'s server on loopback, same model) and, when
--openai-url is given, an OpenAI-compatible server. Cold figures start from an empty key/value
cache; "follow-up" figures are a next turn that reuses the cached conversation prefix.

    python scripts/bench_lm.py                      # tiny random model, CPU
    python scripts/bench_lm.py --size full          # full-size random model (GPU; writes ~19 GB)
    python scripts/bench_lm.py --model DIR          # an existing GLM-4-Voice-9B folder

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GLM-4-Voice-9B folder (default: write a random one)")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny", help="random model size to write")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 1000, 4000])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["local", "glm-server"],
                        choices=["local", "glm-server", "openai"])
    parser.add_argument("--openai-url", help="e.g. http://127.0.0.1:8000/v1 (vLLM serving the same model)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or _write_random(Path(scratch), args.size)
        report = run(folder, args)
    print(json.dumps(report, indent=2))
    return 0


def _write_random(scratch: Path, size: str) -> Path:
    from voicechat.testing import lm

    return Path(lm.write(scratch, size, seed=0)["models"]["lm"]["source"])


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from voicechat.glm.lm.glm_server import GlmServerBackend
    from voicechat.glm.lm.http_stream import HttpSettings
    from voicechat.glm.lm.local import LocalBackend
    from voicechat.glm.lm.openai import OpenAIBackend
    from voicechat.glm.lm.server import LMServer
    from voicechat.glm.text_tokenizer import GlmTextTokenizer

    tokenizer = GlmTextTokenizer.from_pretrained(folder)
    local = LocalBackend.from_pretrained(folder, device=args.device, dtype=args.dtype)
    model = local.loaded
    server = LMServer(local, tokenizer, "127.0.0.1", 0, vocab_size=local.vocab_size)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    settings = HttpSettings(connect_timeout_s=5, read_timeout_s=600, retries=0)
    backends: dict[str, Any] = {"local": local, "glm-server": GlmServerBackend(server.url, tokenizer, settings)}
    if "openai" in args.backends:
        if not args.openai_url:
            raise SystemExit("--backends openai needs --openai-url")
        backends["openai"] = OpenAIBackend(args.openai_url, tokenizer, settings)
    results = []
    try:
        for name in args.backends:
            for length in args.lengths:
                results.append(measure(name, backends[name], local, tokenizer, length, args))
    finally:
        server.shutdown()
        server.server_close()
    return {
        "benchmark": "lm_stream",
        "model": str(folder.name) if args.model else f"random {args.size}",
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "device": str(model.device) + (f" ({torch.cuda.get_device_name()})" if model.device.type == "cuda" else ""),
        "dtype": str(model.dtype).removeprefix("torch."),
        "cpu_threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "note": "median of repeats; tokens_per_s counts tokens after the first; follow_up = next turn reusing the cache",
        "results": results,
    }


def speech_prompt(tokenizer: Any, length: int) -> list[int]:
    """A first-turn speech prompt of exactly ``length`` tokens."""
    from voicechat.glm.prompt import Conversation, PromptBuilder

    builder = PromptBuilder(tokenizer)
    overhead = len(builder.build(Conversation(), speech_tokens=[]).ids)
    codes = [(7 * n) % tokenizer.special.audio_count for n in range(max(length - overhead, 0))]
    return builder.build(Conversation(), speech_tokens=codes, max_tokens=10**9).ids


def measure(name: str, backend: Any, local: Any, tokenizer: Any, length: int, args: argparse.Namespace) -> dict[str, Any]:
    from voicechat.glm.demux import ReplyEnded, demux
    from voicechat.glm.lm import SamplingParams

    prompt = speech_prompt(tokenizer, length)
    params = SamplingParams(temperature=0.8, top_p=0.8, max_new_tokens=args.new_tokens, stop_ids=(), seed=0)
    follow_up = [tokenizer.special.user] + tokenizer.encode("\n") + tokenizer.audio_ids(list(range(40)))
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    for _ in range(args.repeats):
        local.close()  # empty cache: a cold first turn
        for runs, ids in ((cold, prompt), (warm, None)):
            ids = ids if ids is not None else prompt + reply + follow_up
            events = list(demux(backend.stream(ids, params, threading.Event()), tokenizer, (), args.new_tokens))
            end = events[-1]
            if not isinstance(end, ReplyEnded):
                raise SystemExit(f"{name}: {end.error}")
            reply = list(end.reply_ids)
            runs.append(_figures(end))
    return {"backend": name, "prompt_tokens": len(prompt), **_median(cold),
            "follow_up_prompt_tokens": len(prompt) + args.new_tokens + len(follow_up),
            "follow_up_ttft_ms": _median(warm)["ttft_ms"]}


def _figures(end: Any) -> dict[str, float]:
    t = end.timings
    count = len(end.reply_ids)
    decode_s = t.finished - t.first_token
    return {
        "ttft_ms": 1000 * (t.first_token - t.started),
        "first_speech_ms": 1000 * (t.first_speech - t.started) if t.first_speech is not None else float("nan"),
        "tokens_per_s": (count - 1) / decode_s if decode_s > 0 else float("nan"),
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}


if __name__ == "__main__":
    sys.exit(main())
