"""Memory over one long conversation on the tiny models; prints JSON.

One voicechat.live.LiveConversation with its microphone and speaker on a private PulseAudio server
(tests/support/pulse.py) answers many turns: typed questions (ask_text) and, every Nth turn, a
question spoken by espeak-ng into the virtual microphone. Retrieval is end to end over knowledge/
and the session log is on, as in a conversation in the app; the C allocator is set up as
`voicechat chat` sets it (voicechat.allocator). After each turn (its reply played) the process's
resident memory (VmRSS, after a garbage collection) is read; the least-squares slope after the
warm-up turns is the growth per turn (goal: at most 0.1 MiB per turn).

With --trace, tracemalloc runs too (slower) and the lines whose allocations grew most between two
turns are listed, to find what grows.

    python scripts/bench_soak.py [--turns 200] [--spoken-every 10] [--models DIR] [--trace]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import queue
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.pulse import restore, start_private_server, use_server  # noqa: E402
from tests.support.speech import speak  # noqa: E402

QUESTIONS = [
    "How long should green tea steep?",
    "What temperature is best for black tea?",
    "When did the Solar System form?",
    "Which planet is the largest?",
    "How do I fix a puncture?",
]
WARM_UP = 20
GOAL_MIB_PER_TURN = 0.1
REPLY_TOKENS = 20  # generation.max_new_tokens: each reply is played in real time before the next turn
TURN_TIMEOUT_S = 300.0


def allocator_as_in_chat() -> bool:
    """The C allocator's settings that `voicechat chat` makes (none before they existed)."""
    try:
        from voicechat.allocator import keep_large_buffers_out_of_the_heap
    except ImportError:
        return False
    return keep_large_buffers_out_of_the_heap()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak_config(folder: Path, models: Path | None):
    from voicechat.cli import main
    from voicechat.config import load_config
    from voicechat.testing.generator import generate

    generated = models / "config.yaml" if models else generate(folder / "models", "tiny", seed=0)
    data = yaml.safe_load(Path(generated).read_text(encoding="utf-8"))
    data["retrieval"] = {"rag": "e2e", "index_dir": str(folder / "index"), "knowledge_dir": str(REPO / "knowledge")}
    data["sessions"] = {"dir": str(folder / "sessions")}
    data.setdefault("generation", {})["max_new_tokens"] = REPLY_TOKENS
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        assert main(["--config", str(path), "index", str(REPO / "knowledge")]) == 0
    return load_config(path)


class Turns:
    """The conversation's events that the soak waits for; everything else is dropped at once, as
    a screen that shows an event and lets it go would."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.heard = False  # the microphone's first level: it is open

    def emit(self, event) -> None:
        from voicechat.events import MicLevel, StageFailed, StateChanged, TurnFinished

        if isinstance(event, (StateChanged, TurnFinished, StageFailed)) or (
                isinstance(event, MicLevel) and not self.heard):
            self.heard = self.heard or isinstance(event, MicLevel)
            self.events.put(event)

    def wait_for(self, wanted) -> object:
        from voicechat.events import StageFailed

        deadline = time.monotonic() + TURN_TIMEOUT_S
        while True:
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(event, StageFailed) and event.stage in ("loading", "microphone", "speaker"):
                raise RuntimeError(f"{event.stage}: {event.message}")
            if wanted(event):
                return event

    def turn(self, ask) -> bool:
        """Asks, then waits until the reply has been played and the conversation listens again;
        True when the turn finished without being interrupted."""
        from voicechat.events import StateChanged, TurnFinished

        ask()
        finished = self.wait_for(lambda e: isinstance(e, TurnFinished))
        self.wait_for(lambda e: isinstance(e, StateChanged) and e.new == "listening")
        return not finished.interrupted


def slope(turns: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.asarray(turns, float), np.asarray(values, float), 1)[0])


def grown_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, turns: int, top: int = 15) -> list[dict]:
    stats = after.compare_to(before, "lineno")
    return [{"line": f"{stat.traceback[0].filename.removeprefix(str(REPO) + '/')}:{stat.traceback[0].lineno}",
             "grew_kib": round(stat.size_diff / 1024, 1), "per_turn_bytes": round(stat.size_diff / turns),
             "blocks_grew": stat.count_diff}
            for stat in stats[:top] if stat.size_diff > 0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--spoken-every", type=int, default=10, help="every Nth turn is spoken (0: none)")
    parser.add_argument("--models", type=Path, help="tiny models written by scripts/make_test_models.py")
    parser.add_argument("--trace", action="store_true", help="tracemalloc snapshots at turns 50 and 150 "
                                                              "(scaled to --turns)")
    args = parser.parse_args()
    import torch

    from voicechat.events import MicLevel
    from voicechat.live import LiveConversation

    torch.set_num_threads(1)
    pinned = allocator_as_in_chat()
    marks = (max(WARM_UP, args.turns // 4), args.turns * 3 // 4)
    spoken_questions = [np.concatenate([speak(q), np.zeros(16000, np.float32)]) for q in QUESTIONS]
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    server = start_private_server()
    previous = use_server(server)
    try:
        config = soak_config(folder, args.models)
        turns = Turns()
        live = LiveConversation(config, save=True, use_audio=True)
        began = time.monotonic()
        live.start(turns.emit)
        turns.wait_for(lambda e: isinstance(e, MicLevel))
        loaded_s = time.monotonic() - began
        if live.player is None:
            raise RuntimeError("the virtual speaker did not open")
        if args.trace:
            tracemalloc.start()
        rows, snapshots, traced, spoken, typed, interrupted = [], {}, [], 0, 0, 0
        for number in range(1, args.turns + 1):
            started = time.monotonic()
            question = QUESTIONS[number % len(QUESTIONS)]
            if args.spoken_every and number % args.spoken_every == 0:
                audio = spoken_questions[number % len(QUESTIONS)]
                ok = turns.turn(lambda: server.play(audio, 16000).wait())
                spoken += 1
            else:
                ok = turns.turn(lambda: live.ask_text(question))
                typed += 1
            interrupted += not ok
            gc.collect()
            rows.append((number, rss_mib(), time.monotonic() - started))
            if args.trace:
                traced.append(tracemalloc.get_traced_memory()[0] / 2**20)
                if number in marks:
                    snapshots[number] = tracemalloc.take_snapshot()
            print(f"turn {number}: {rows[-1][1]:.1f} MiB, {rows[-1][2]:.1f} s", file=sys.stderr)
        live.close()
    finally:
        server.stop()
        restore(previous)
        shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)

    after = [(n, rss) for n, rss, _ in rows if n > WARM_UP]
    per_turn = slope([n for n, _ in after], [rss for _, rss in after]) if len(after) > 1 else None
    result = {
        "models": "tiny, one torch thread",
        "turns": args.turns, "typed": typed, "spoken": spoken, "interrupted": interrupted,
        "reply_tokens": REPLY_TOKENS, "load_s": round(loaded_s, 1),
        "seconds": round(sum(s for _, _, s in rows), 1),
        "turn_s_median": round(float(np.median([s for _, _, s in rows])), 2),
        "rss_mib": {"after_turn_1": round(rows[0][1], 1), f"after_turn_{WARM_UP}": round(rows[WARM_UP - 1][1], 1)
                    if len(rows) >= WARM_UP else None, "last": round(rows[-1][1], 1)},
        "slope_after_warm_up": None if per_turn is None else {
            "mib_per_turn": round(per_turn, 4), "mib_per_100_turns": round(per_turn * 100, 2),
            "goal_mib_per_turn": GOAL_MIB_PER_TURN, "within_goal": per_turn <= GOAL_MIB_PER_TURN},
        "rss_every_10_turns": [round(rss, 1) for n, rss, _ in rows if n % 10 == 0],
        "large_buffers_out_of_the_heap": pinned,
        "traced": args.trace,
    }
    if len(snapshots) == 2:
        first, last = marks
        python_slope = slope(list(range(first, last + 1)), traced[first - 1:last])
        result["grew_between_turns"] = {"from": first, "to": last,
                                        "python_objects_mib_per_turn": round(python_slope, 4),
                                        "lines": grown_lines(snapshots[first], snapshots[last], last - first)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
