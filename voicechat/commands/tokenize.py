"""`voicechat tokenize AUDIO`: the GLM-4-Voice speech tokens of an audio file, and how long they took."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from voicechat.config import Config

HELP = "print the GLM-4-Voice speech tokens (12.5 per second) of an audio file and the time taken"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", type=Path, metavar="AUDIO",
                        help="audio file in any format libsndfile reads, any rate; channel 0 is used")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace, config: Config) -> int:
    from voicechat.audio.files import read_audio
    from voicechat.glm.speech_tokenizer import SpeechTokenizer
    from voicechat.models import resolve_model

    samples, rate = read_audio(args.audio)  # a bad file fails before the model loads
    spec = config.models.speech_tokenizer
    started = time.perf_counter()
    tokenizer = SpeechTokenizer.from_pretrained(resolve_model("speech_tokenizer", config), spec.device, spec.dtype)
    loaded = time.perf_counter()
    tokens = tokenizer.tokenize(samples, rate)
    finished = time.perf_counter()

    seconds = samples.shape[0] / rate
    dtype = str(tokenizer.model.conv1.weight.dtype).removeprefix("torch.")
    if args.json:
        print(json.dumps({
            "audio": str(args.audio),
            "audio_seconds": round(seconds, 3),
            "tokens": tokens,
            "tokenize_seconds": round(finished - loaded, 4),
            "load_seconds": round(loaded - started, 3),
            "device": str(tokenizer.device),
            "dtype": dtype,
        }))
    else:
        print(" ".join(map(str, tokens)))
        print(f"{len(tokens)} tokens from {seconds:.2f} s of audio in {(finished - loaded) * 1000:.0f} ms "
              f"(model loaded in {loaded - started:.2f} s; {tokenizer.device}, {dtype})")
    return 0

