"""voicechat detokenize TOKENS.json --out reply.wav [--chunks 10,25,50 | --whole [--reference-noise]]"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from voicechat.config import Config
from voicechat.errors import VoicechatError

HELP = "decode a list of GLM-4-Voice speech tokens to an audio file, streamed chunk by chunk or in one pass"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tokens", type=Path, metavar="TOKENS.json",
                        help="a JSON list of speech token ids (0-16383), or an object with a 'tokens' list")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="where to write the audio (.wav, .flac or .ogg, from the name)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chunks", type=_schedule, metavar="N,N,...",
                      help="streaming chunk sizes in tokens, the last repeating (default: decoder.chunk_schedule)")
    mode.add_argument("--whole", action="store_true", help="decode all tokens in one pass instead of streaming")
    parser.add_argument("--reference-noise", action="store_true",
                        help="with --whole: draw the random numbers as the reference implementation does (one "
                             "generator seeded 42: the flow's starting noise, then the sine source's phases and "
                             "noise), so the audio can be compared with the reference's decode")


def _schedule(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"expected positive token counts separated by commas, got {text!r}")
    return sizes


def read_tokens(path: Path) -> list[int]:
    try:
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VoicechatError(f"{path}: no such token file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VoicechatError(f"{path}: not a JSON token list ({error})") from None
    if isinstance(data, dict):
        data = data.get("tokens")
    if not isinstance(data, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in data):
        raise VoicechatError(f"{path}: expected a JSON list of integer speech token ids")
    return data


def run(args: argparse.Namespace, config: Config) -> int:
    import numpy as np

    from voicechat.audio.files import check_output, write_audio
    from voicechat.glm.decoder import SpeechDecoder
    from voicechat.models import resolve_model

    if args.reference_noise and not args.whole:
        raise VoicechatError("--reference-noise needs --whole: the reference's random numbers are drawn for "
                             "one decode of the whole reply")
    tokens = read_tokens(args.tokens)
    if not tokens:
        raise VoicechatError(f"{args.tokens}: the token list is empty")
    check_output(args.out, args.tokens)
    spec = config.models.decoder
    decoder = SpeechDecoder.from_pretrained(resolve_model("decoder", config), device=spec.device, dtype=spec.dtype)
    decoder.check_tokens(tokens)
    if args.whole:
        if args.reference_noise:
            noise, how = decoder.reference_noise(), "in one pass with the reference's random numbers"
        else:
            noise, how = decoder.noise(config.decoder.seed), "in one pass"
        audio = decoder.decode(tokens, noise=noise)
    else:
        settings = config.decoder
        if args.chunks:
            settings = dataclasses.replace(settings, chunk_schedule=args.chunks)
        session = decoder.session(settings)
        pieces = [session.push([token]) for token in tokens]  # one at a time, as a language model sends them
        pieces.append(session.finish())
        audio, how = np.concatenate(pieces), f"in {session.chunks} chunks"
    write_audio(args.out, audio, decoder.sample_rate)
    print(f"{args.out}: {len(audio) / decoder.sample_rate:.2f} s from {len(tokens)} speech tokens, decoded {how}")
    return 0
