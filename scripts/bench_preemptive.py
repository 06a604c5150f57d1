"""The reply prepared in the pause (audio.preemptive): end of the question -> first sound, with it
on and off in the same run; prints JSON.

One voicechat.live.LiveConversation on the tiny models (retrieval end to end over knowledge/), its
microphone and speaker on a private PulseAudio server (tests/support/pulse.py), the end of each
question decided by Smart Turn v3.2 (audio.turn: smart; --turn, --preset). Questions said by a
Piper voice (tests/support/piper_speech.py) are played into the virtual microphone, each followed by
silence; preemptive work is switched on and off turn by turn (on, off, off, on, ...), so both see
the same questions and the same load on the machine.

From each turn's timings (voicechat.events.TurnTimings, derived from the conversation's events):
end of the question (the endpointer's estimate of the end of speech) -> first sample at the output
device (``first_heard_ms``); confirmation of the end of the turn -> first sound
(``confirmed_to_heard_ms``; without preemptive work the turn starts at the confirmation); the
confirmation itself (``endpoint_delay_ms``); and with preemptive work, the work done before the
confirmation and the share of turns whose first audio was ready by then. ``listener_lag_ms``: how
late the end-of-turn decision reached the conversation after the audio it was made on, because the
listener shares the CPU with the models.

    python scripts/bench_preemptive.py [--questions 10] [--models DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.piper_speech import QUESTIONS, say, smart_turn_file  # noqa: E402
from tests.support.pulse import MIC_RATE, restore, start_private_server, use_server  # noqa: E402
from voicechat.config import PlaybackConfig  # noqa: E402

REPLY_TOKENS = 40  # generation.max_new_tokens: replies are played in real time
SILENCE_AFTER_S = 3.0
TURN_TIMEOUT_S = 300.0


def bench_config(folder: Path, models: Path | None, turn_model: Path, turn: str, preset: str, block_ms: int):
    from voicechat.cli import main
    from voicechat.config import load_config
    from voicechat.testing.generator import generate

    generated = models / "config.yaml" if models else generate(folder / "models", "tiny", seed=0)
    data = yaml.safe_load(Path(generated).read_text(encoding="utf-8"))
    data["retrieval"] = {"rag": "e2e", "index_dir": str(folder / "index"), "knowledge_dir": str(REPO / "knowledge")}
    data["sessions"] = {"save": False}
    data.setdefault("generation", {})["max_new_tokens"] = REPLY_TOKENS
    data.setdefault("models", {})["turn"] = {"source": str(turn_model)}
    data["audio"] = {**data.get("audio", {}), "turn": turn, "preemptive": True, "vad": {"preset": preset},
                     "playback": {"block_ms": block_ms}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        assert main(["--config", str(path), "index", str(REPO / "knowledge")]) == 0
    return load_config(path)


class Turns:
    """The events the benchmark waits for; and how late each end-of-turn decision arrived."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.lags: list[float] = []

    def emit(self, event) -> None:
        from voicechat.events import MicLevel, StageFailed, StateChanged, TurnFinished

        if isinstance(event, (StateChanged, TurnFinished, StageFailed, MicLevel)):
            self.events.put(event)

    def listening(self, on_audio):
        """Wraps the session's microphone input: the decision's audio time against its arrival."""
        from voicechat.audio.events import UtteranceEnded

        def heard(event) -> None:
            if isinstance(event, UtteranceEnded):
                self.lags.append(time.monotonic() - event.t)
            on_audio(event)

        return heard

    def wait_for(self, wanted):
        from voicechat.events import StageFailed

        deadline = time.monotonic() + TURN_TIMEOUT_S
        while True:
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(event, StageFailed) and event.stage in ("loading", "microphone", "speaker"):
                raise RuntimeError(f"{event.stage}: {event.message}")
            if wanted(event):
                return event

    def turn(self, speak):
        from voicechat.events import StateChanged, TurnFinished

        speak()
        finished = self.wait_for(lambda e: isinstance(e, TurnFinished))
        self.wait_for(lambda e: isinstance(e, StateChanged) and e.new == "listening")
        return finished


def summary(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"p50": round(float(np.percentile(values, 50)), 1), "p90": round(float(np.percentile(values, 90)), 1),
            "n": len(values)}


def report(rows: list) -> dict:
    timings = [t for t in rows]
    return {
        "end_of_question_to_first_sound_ms": summary([t.first_heard_ms for t in timings]),
        "confirmation_to_first_sound_ms": summary([t.confirmed_to_heard_ms for t in timings]),
        "confirmation_to_first_audio_ms": summary([t.confirmed_to_audio_ms for t in timings]),
        "end_of_question_to_confirmation_ms": summary([t.endpoint_delay_ms for t in timings]),
        "preemptive_work_ms": summary([t.preemptive_ms for t in timings]),
        "turns_started_in_the_pause": sum(t.preemptive_ms is not None for t in timings),
        "first_audio_ready_at_confirmation": sum(t.confirmed_to_audio_ms == 0 for t in timings),
        "confirmation_to_first_sound_ms_when_ready": summary(  # the pause outlasted the pipeline
            [t.confirmed_to_heard_ms for t in timings if t.confirmed_to_audio_ms == 0]),
        "turns": len(timings),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--models", type=Path, help="tiny models written by scripts/make_test_models.py")
    parser.add_argument("--turn", choices=("smart", "silence"), default="smart", help="audio.turn")
    parser.add_argument("--preset", choices=("relaxed", "default", "aggressive"), default="default",
                        help="audio.vad.preset (relaxed waits longer: the pause outlasts more of the pipeline)")
    parser.add_argument("--block-ms", type=int, default=PlaybackConfig.block_ms,
                        help="audio.playback.block_ms (the output device's latency is two blocks)")
    args = parser.parse_args()
    import torch

    from voicechat.events import MicLevel
    from voicechat.live import LiveConversation

    torch.set_num_threads(1)
    turn_model = smart_turn_file()
    if turn_model is None:
        raise SystemExit("the Smart Turn model could not be fetched (scripts/fetch_turn_model.py)")
    silence = np.zeros(int(SILENCE_AFTER_S * MIC_RATE), np.float32)
    spoken = [np.concatenate([silence[:MIC_RATE // 2], say(f"{first} {second}"), silence])
              for first, second in QUESTIONS[: args.questions]]
    folder = Path(tempfile.mkdtemp(prefix="bench-preemptive-"))
    server = start_private_server()
    previous = use_server(server)
    rows: dict[bool, list] = {True: [], False: []}
    lags: dict[bool, list[float]] = {True: [], False: []}
    try:
        config = bench_config(folder, args.models, turn_model, args.turn, args.preset, args.block_ms)
        turns = Turns()
        live = LiveConversation(config, save=False, use_audio=True)
        live.session.on_audio = turns.listening(live.session.on_audio)
        live.start(turns.emit)
        turns.wait_for(lambda e: isinstance(e, MicLevel))
        if live.player is None or live.listener is None or (args.turn == "smart" and live.listener.turn is None):
            raise RuntimeError("the virtual devices or the end-of-turn model did not open")
        turns.turn(lambda: server.play(spoken[0], MIC_RATE).wait())  # warm-up, not counted
        for number, audio in enumerate(spoken):
            for preemptive in ((True, False) if number % 2 == 0 else (False, True)):
                live.session.preemptive = preemptive
                finished = turns.turn(lambda: server.play(audio, MIC_RATE).wait())
                rows[preemptive].append(finished.timings)
                lags[preemptive].append(1000 * turns.lags[-1])
                print(f"question {number + 1}, preemptive {'on' if preemptive else 'off'}: "
                      f"first sound {finished.timings.first_heard_ms} ms", file=sys.stderr)
        underflows = live.player.device_underflows
        live.close()
    finally:
        server.stop()
        restore(previous)
        shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "models": "tiny, one torch thread; retrieval e2e",
        "audio": {"turn": args.turn, "preset": args.preset, "playback_block_ms": args.block_ms},
        "device_underflows": underflows,
        "questions": args.questions, "voice": "Piper en_US-joe-medium",
        "preemptive_on": {**report(rows[True]), "listener_lag_ms": summary(lags[True])},
        "preemptive_off": {**report(rows[False]), "listener_lag_ms": summary(lags[False])},
    }
    on, off = (result[k]["end_of_question_to_first_sound_ms"] for k in ("preemptive_on", "preemptive_off"))
    if on and off:
        result["saved_p50_ms"] = round(off["p50"] - on["p50"], 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
