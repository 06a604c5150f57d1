"""`voicechat vad AUDIO`: run the endpointer over a recording and list the utterances it finds."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

HELP = "find the utterances in a recording with the endpointer (to tune VAD presets)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", type=Path, metavar="AUDIO", help="a recording (wav, flac, ogg, ...)")
    parser.add_argument("--preset", choices=["relaxed", "default", "aggressive"],
                        help="endpointing preset (default: audio.vad.preset)")
    parser.add_argument("--aggressiveness", type=int, choices=[0, 1, 2, 3],
                        help="webrtcvad mode (default: audio.vad.aggressiveness)")
    parser.add_argument("--turn", choices=["silence", "smart"],
                        help="how the end of an utterance is decided (default: audio.turn)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace, config) -> int:
    import numpy as np

    from voicechat.audio.endpointer import find_utterances
    from voicechat.audio.events import UtteranceDiscarded, UtteranceEnded
    from voicechat.audio.files import read_speech
    from voicechat.audio.turn import load_turn_detector

    vad = config.audio.vad
    if args.preset:
        vad = dataclasses.replace(vad, preset=args.preset)
    if args.aggressiveness is not None:
        vad = dataclasses.replace(vad, aggressiveness=args.aggressiveness)
    if args.turn:
        config = dataclasses.replace(config, audio=dataclasses.replace(config.audio, turn=args.turn))
    turn, warning = load_turn_detector(config)
    if warning:
        import sys

        print(f"warning: {warning}", file=sys.stderr)
    audio = read_speech(args.audio)
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)
    found = [e for e in find_utterances(pcm, vad, turn) if isinstance(e, (UtteranceEnded, UtteranceDiscarded))]
    rows = [
        {
            "start": round(e.start, 3),
            "end": round(e.end, 3),
            "decided": round(e.t, 3),  # with the end-of-turn model's compute time (model_ms)
            "model_ms": round(e.model_s * 1000, 1) if isinstance(e, UtteranceEnded) else 0.0,
            "kept": isinstance(e, UtteranceEnded),
            "reason": e.reason if isinstance(e, UtteranceEnded) else "too short",
        }
        for e in found
    ]
    settings = {"preset": vad.preset, "trailing_silence_ms": vad.trailing_ms if turn is None else vad.smart.longest_ms,
                "aggressiveness": vad.aggressiveness, "frame_ms": vad.frame_ms,
                "turn": "smart" if turn is not None else "silence"}
    if turn is not None:
        settings.update(turn_silence_ms=vad.smart.silence_ms, turn_threshold=turn.threshold,
                        turn_check_ms=vad.turn_check_ms)
    if args.json:
        print(json.dumps({"file": str(args.audio), "duration_s": round(pcm.size / 16000, 3),
                          "settings": settings, "utterances": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.audio} ({pcm.size / 16000:.1f} s; preset {vad.preset}, "
                  f"trailing silence {vad.trailing_ms} ms, aggressiveness {vad.aggressiveness})",
                  title_justify="left")
    for column in ("#", "start s", "end s", "decided s", "delay s", "result"):
        table.add_column(column, justify="right" if column != "result" else "left")
    for number, row in enumerate(rows, 1):
        result = "utterance" if row["kept"] else "discarded (too short)"
        if row["reason"] == "max_length":
            result += " (cut at max length)"
        elif row["reason"] == "complete":
            result += " (sounded finished)"
        table.add_row(str(number), f"{row['start']:.2f}", f"{row['end']:.2f}", f"{row['decided']:.2f}",
                      f"{row['decided'] - row['end']:.2f}", result)
    Console().print(table if rows else "No speech found.")
    return 0
