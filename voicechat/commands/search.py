"""`voicechat search "TEXT" | --audio FILE`: query the knowledge index from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "search the knowledge index with a typed or spoken question"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the question (text mode)")
    parser.add_argument("--audio", metavar="FILE", help="a recorded question (any sample rate)")
    parser.add_argument("--mode", choices=["e2e", "asr", "text"], default=None,
                        help="e2e: SONAR speech embedding; asr: Whisper transcript; text: typed "
                             "(default: text for TEXT, retrieval.rag for --audio)")
    parser.add_argument("-k", type=int, default=None, metavar="N", help="passages to return (default: retrieval.top_k)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, config: Any) -> int:
    from voicechat.errors import ConfigError

    if args.text is not None and not args.text.strip():
        raise ConfigError("the question TEXT is empty")
    if bool(args.text) == bool(args.audio):
        raise ConfigError("give either a question TEXT or --audio FILE")
    mode = args.mode or ("text" if args.text else ("asr" if config.retrieval.rag == "asr" else "e2e"))
    if mode == "text" and not args.text:
        raise ConfigError("--mode text needs a question TEXT (use --mode e2e or asr with --audio)")
    if mode != "text" and not args.audio:
        raise ConfigError(f"--mode {mode} needs --audio FILE")
    if args.k is not None and not 1 <= args.k <= 1000:
        raise ConfigError(f"-k: expected 1-1000, got {args.k}")

    from voicechat.retrieval.retriever import load_retriever

    audio = None
    if mode != "text":
        from voicechat.audio.files import read_speech

        audio = read_speech(args.audio)  # a bad file fails before the encoders load
    retriever = load_retriever(config, {mode})
    try:
        if audio is None:
            result = retriever.text(args.text, args.k)
        else:
            result = retriever.retrieve(mode, samples=audio, rate=16000, k=args.k)
    finally:
        retriever.index.close()
    if args.json:
        print(json.dumps({"mode": result.mode, "query_text": result.query_text,
                          "timings_s": {k: round(v, 6) for k, v in result.timings.items()},
                          "hits": [hit.as_json() for hit in result.hits]}, indent=2, ensure_ascii=False))
        return 0
    print_hits(result)
    return 0


def print_hits(result) -> None:
    if result.query_text and result.mode == "asr":
        print(f"transcript: {result.query_text}")
    if not result.hits:
        print("no passage above the score threshold")
        return
    for rank, hit in enumerate(result.hits, start=1):
        heading = f" — {hit.chunk.heading}" if hit.chunk.heading else ""
        print(f"{rank}. {hit.score:.3f}  {hit.source}{heading} ({hit.location})")
        print(f"   {hit.chunk.text}")
