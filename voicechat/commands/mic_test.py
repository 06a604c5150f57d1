"""`voicechat mic-test`: a live level meter and VAD state for the microphone, optionally recorded."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "show the microphone level and what the endpointer hears; optionally record it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, metavar="N", help="how long (default 10)")
    parser.add_argument("--record", type=Path, metavar="FILE", help="write what was heard (16 kHz WAV)")
    parser.add_argument("--device", metavar="DEVICE",
                        help="input device index or part of its name (default: audio.input_device)")


def run(args: argparse.Namespace, config) -> int:
    import numpy as np
    from rich.console import Console
    from rich.live import Live

    from voicechat.audio.capture import Capture
    from voicechat.audio.endpointer import Endpointer
    from voicechat.audio.events import Level, UtteranceDiscarded, UtteranceEnded
    from voicechat.audio.files import write_wav
    from voicechat.audio.resample import MODEL_RATE
    from voicechat.audio.turn import load_turn_detector

    if args.seconds <= 0:
        from voicechat.errors import AudioError

        raise AudioError("--seconds must be more than 0")
    console = Console()
    recorded: list[np.ndarray] = []
    state = MeterState()
    turn, warning = load_turn_detector(config)
    if warning:
        console.print(f"[yellow]{warning}[/]")
    with Capture(args.device or config.audio.input_device, block_ms=config.audio.capture_block_ms) as mic:
        console.print(f"Listening on {mic.device.name!r} at {mic.rate} Hz for {args.seconds:g} s "
                      "(Ctrl+C stops).")
        endpointer = Endpointer(config.audio.vad, turn=turn)
        state.turn_threshold = turn.threshold if turn is not None else None
        stop_at = time.monotonic() + args.seconds
        try:
            with Live(state.render(), console=console, refresh_per_second=config.ui.level_meter_hz) as live:
                while time.monotonic() < stop_at:
                    block = mic.read(timeout=0.2)
                    if block is None:
                        continue
                    if args.record:
                        recorded.append(block.samples)
                    for event in endpointer.push(block.samples):
                        if isinstance(event, Level):
                            state.level = event
                        elif isinstance(event, UtteranceEnded):
                            finished = " (sounded finished)" if event.reason == "complete" else ""
                            state.utterances.append(f"{event.start:5.2f}-{event.end:5.2f} s, "
                                                    f"decided {event.decision_delay:.2f} s later{finished}")
                        elif isinstance(event, UtteranceDiscarded):
                            state.discarded += 1
                    state.overflows = mic.overflows
                    live.update(state.render())
        except KeyboardInterrupt:
            pass
    if args.record:
        write_wav(args.record, np.concatenate(recorded) if recorded else np.zeros(0, np.int16), MODEL_RATE)
        console.print(f"Recorded {sum(map(len, recorded)) / MODEL_RATE:.1f} s to {args.record}")
    return 0


class MeterState:
    def __init__(self) -> None:
        self.level = None
        self.utterances: list[str] = []
        self.discarded = 0
        self.overflows = 0
        self.turn_threshold: float | None = None  # audio.turn: smart

    def render(self):
        from rich.text import Text

        text = Text()
        if self.level is None:
            return Text("waiting for audio...")
        width = 40
        filled = int(round(width * min(1.0, max(0.0, (self.level.dbfs + 70) / 70))))
        floor_at = int(round(width * min(1.0, max(0.0, (self.level.noise_floor_dbfs + 70) / 70))))
        bar = ["█" if i < filled else "·" for i in range(width)]
        if floor_at < width:
            bar[floor_at] = "|"
        text.append("level ")
        text.append("".join(bar), style="green" if self.level.speech else "cyan")
        text.append(f" {self.level.dbfs:6.1f} dBFS  floor {self.level.noise_floor_dbfs:6.1f}\n")
        state = "SPEAKING" if self.level.speaking else "listening"
        text.append(f"vad   {state:<9}", style="bold green" if self.level.speaking else "dim")
        text.append(f"  utterances {len(self.utterances)}  discarded {self.discarded}  "
                    f"overflows {self.overflows}\n")
        if self.turn_threshold is not None:
            probability = self.level.turn_probability
            shown = "  -  " if probability is None else f"{probability:4.2f}"
            text.append(f"turn  finished {shown}  (ends the question at {self.turn_threshold:.2f}; "
                        "asked when you pause)\n",
                        style="bold" if probability is not None and probability >= self.turn_threshold else "")
        for line in self.utterances[-3:]:
            text.append(f"      heard {line}\n")
        return text
