"""End-of-turn benchmark; prints JSON.

Spoken questions (Piper's joe-us voice, tests/support/piper_speech.py), each said in two parts with
a pause of 0.3-1.0 s between them (said in one breath with a comma, cut at the comma, so that
the first part keeps its unfinished tone), over white noise at 20, 10 and 5 dB SNR. For each way of ending
a turn: the decision delay after the true end of speech (p50, p90, on the audio clock plus the
model's compute time for the check that decided) and the share of questions cut inside the pause, for the `silence`
presets and for `smart` at several thresholds, first checks and longest silences (the trade-off
curve); then the cost of each stage per
call and per 10 ms of audio.

Run from the repository root: python scripts/bench_turn.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.piper_speech import QUESTIONS, say_with_pause, smart_turn_file  # noqa: E402
from tests.support.speech import scene  # noqa: E402
from voicechat.audio.endpointer import Endpointer  # noqa: E402
from voicechat.audio.events import UtteranceEnded  # noqa: E402
from voicechat.audio.turn import SileroVad, SmartTurn, TurnDetector, log_mel_features  # noqa: E402
from voicechat.config import VAD_PRESETS, VadConfig  # noqa: E402

NOISE_DBFS = {"snr20": -40.0, "snr10": -30.0, "snr5": -25.0}  # speech is at -20 dBFS RMS
PAUSES_S = (0.3, 0.5, 0.7, 1.0)
THRESHOLDS = (0.5, 0.7, 0.9, 0.95, 0.98)
FIRST_CHECK_MS = (150, 300, 450, 600)  # silence before the model is first asked
LONGEST_MS = (700, 1200)  # the silence that ends the turn when the model never says complete
STEP_MS = 150  # the model is asked again after each further STEP_MS of silence


class Recorder(TurnDetector):
    """Never ends a turn itself; logs every check: (decision time, silence so far, probability).
    The decision time includes the model's compute, as the endpointer's does."""

    def __init__(self, model, silero: SileroVad) -> None:
        super().__init__(model, threshold=2.0, silero=silero)
        self.checks, self.endpointer = [], None

    def complete(self, audio: np.ndarray) -> bool:
        e = self.endpointer
        silence_ms = min(e._silent, e._quiet) * e.config.frame_ms
        started = time.perf_counter()
        probability = self.model.probability(audio.astype(np.float32) / 32768.0)
        self.checks.append((e._time(e._index) + time.perf_counter() - started, silence_ms, probability))
        return False


def first_end(samples, config, detector=None) -> float | None:
    endpointer = Endpointer(config, turn=detector)
    if detector is not None:
        detector.endpointer = endpointer
    events = endpointer.push(samples) + endpointer.finish()
    ends = [e.t for e in events if isinstance(e, UtteranceEnded)]
    return ends[0] if ends else None


def outcome(decided: float | None, pause_end: float, true_end: float, pause: float) -> tuple[str, float | None, float]:
    if decided is None:
        return "missed", None, pause
    if decided < pause_end:
        return "cut", None, pause
    return "ok", decided - true_end, pause


def summary(rows: list[tuple[str, float | None, float]]) -> dict:
    delays = np.array([d for kind, d, _ in rows if kind == "ok"])
    by_pause = {f"{pause}s": round(float(np.mean([k == "cut" for k, _, p in rows if p == pause])), 2)
                for pause in PAUSES_S}
    return {
        "cut_in_pause": round(sum(kind == "cut" for kind, _, _ in rows) / len(rows), 3),
        "cut_by_pause": by_pause,
        "missed": sum(kind == "missed" for kind, _, _ in rows),
        "delay_p50_ms": round(float(np.percentile(delays, 50)) * 1000) if delays.size else None,
        "delay_p90_ms": round(float(np.percentile(delays, 90)) * 1000) if delays.size else None,
    }


def scenes(count: int):
    for noise_name, noise_dbfs in NOISE_DBFS.items():
        for number, (first, second) in enumerate(QUESTIONS[:count]):
            pause = PAUSES_S[number % len(PAUSES_S)]
            before, after = say_with_pause(first, second)
            recording = scene([1.0, before, pause, after, 1.6], noise_dbfs, seed=number)
            yield noise_name, number, pause, recording


def bench(count: int, model: SmartTurn) -> tuple[dict, list]:
    silence: dict[int, list] = {ms: [] for ms in sorted({*VAD_PRESETS.values(), *LONGEST_MS})}
    smart: dict[tuple, list] = {}
    logs = []
    for noise_name, number, pause, recording in scenes(count):
        (_, _), (second_start, true_end) = recording.speech
        ends = {ms: first_end(recording.samples, VadConfig(trailing_silence_ms=ms)) for ms in silence}
        for ms, decided in ends.items():
            silence[ms].append(outcome(decided, second_start, true_end, pause))
        recorder = Recorder(model, SileroVad.load())
        config = VadConfig(trailing_silence_ms=max(LONGEST_MS), turn_silence_ms=STEP_MS, turn_check_ms=STEP_MS)
        first_end(recording.samples, config, recorder)
        logs.append({"noise": noise_name, "question": number, "pause_s": pause, "second_start": second_start,
                     "true_end": true_end, "checks": recorder.checks})
        for longest in LONGEST_MS:
            for first in FIRST_CHECK_MS:
                for threshold in THRESHOLDS:
                    early = [t for t, ms, p in recorder.checks if first <= ms < longest and p >= threshold]
                    decided = min([*early, ends[longest]]) if ends[longest] is not None else None
                    smart.setdefault((longest, first, threshold), []).append(outcome(decided, second_start, true_end, pause))
    calls = sum(len(log["checks"]) for log in logs)
    return {
        "silence": [{"trailing_silence_ms": ms, **summary(rows)} for ms, rows in silence.items()],
        "smart": [{"longest_silence_ms": longest, "first_check_ms": first, "threshold": threshold, **summary(rows)}
                  for (longest, first, threshold), rows in sorted(smart.items())],
        "model_calls_per_question": round(calls / len(logs), 2),
    }, logs


def stage_costs(model: SmartTurn, repeats: int) -> dict:
    import webrtcvad

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 4) * 0.1).astype(np.float32)
    features = log_mel_features(audio)[None]

    def per_call(fn, n):
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1000

    silero = SileroVad.load()
    vad = webrtcvad.Vad(2)
    frame = (audio[:480] * 32767).astype(np.int16).tobytes()
    feature_ms = per_call(lambda: log_mel_features(audio), repeats)
    onnx_ms = per_call(lambda: model._session.run(None, {model._input: features}), repeats)
    silero_ms = per_call(lambda: silero.push(audio[:512]), 200)
    webrtc_ms = per_call(lambda: vad.is_speech(frame, 16000), 2000)
    return {
        "turn_features_ms_per_call": round(feature_ms, 2),
        "turn_model_ms_per_call": round(onnx_ms, 2),
        "silero_ms_per_10ms_audio": round(silero_ms * 10 / 32, 4),
        "webrtcvad_ms_per_10ms_audio": round(webrtc_ms * 10 / 30, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 questions instead of all")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--checks", type=Path, help="write every check (time, probability) here")
    args = parser.parse_args()
    path = smart_turn_file()
    if path is None:
        raise SystemExit("no Smart Turn model: run scripts/fetch_turn_model.py FOLDER and set VOICECHAT_TURN_MODEL")
    model = SmartTurn.load(path)
    count = 8 if args.quick else len(QUESTIONS)
    figures, checks = bench(count, model)
    if args.checks:
        args.checks.write_text(json.dumps(checks))
    result = {"questions": count, "noise": list(NOISE_DBFS), "pauses_s": list(PAUSES_S),
              **figures, "cost": stage_costs(model, 5 if args.quick else 20)}
    model_ms = result["cost"]["turn_features_ms_per_call"] + result["cost"]["turn_model_ms_per_call"]
    # the model runs at most once per check while silent; spread over the ~3 s of a question
    result["cost"]["turn_model_ms_per_10ms_audio"] = round(model_ms * result["model_calls_per_question"] / 300, 3)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
