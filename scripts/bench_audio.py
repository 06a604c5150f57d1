"""Audio benchmarks; prints JSON.

- endpointing: decision delay after the true end of speech, split and miss rates, per preset and
  noise level, on espeak-ng questions (English and Mandarin) with known speech boundaries;
- playback: first audio pushed -> first sample at the device, and underruns while another process
  keeps a core busy (PulseAudio null sink, started privately);
- the idle listening loop (microphone -> endpointer, nobody speaking): CPU share of one core and
  memory.

Run from the repository root: python scripts/bench_audio.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.pulse import restore, start_private_server, use_server  # noqa: E402
from tests.support.speech import scene, speak  # noqa: E402
from voicechat.audio.endpointer import find_utterances  # noqa: E402
from voicechat.audio.events import UtteranceEnded  # noqa: E402
from voicechat.config import VAD_PRESETS, AudioConfig, VadConfig  # noqa: E402

PHRASES = [  # (first part, second part, voice): spoken with a pause between the parts
    ("What is the capital of France", "and how many people live there?", "en-us"),
    ("How do I adjust the brakes on my bicycle", "when they rub on the wheel?", "en-us"),
    ("Which planet has the most moons", "and how were they discovered?", "en-us"),
    ("请问熊猫主要吃什么", "它们生活在哪里？", "cmn"),
    ("绿茶应该用多少度的水泡", "泡几分钟比较好？", "cmn"),
]
NOISE_DBFS = {"clean": None, "snr30": -50.0, "snr20": -40.0, "snr10": -30.0, "snr5": -25.0}
PAUSES_S = (0.25, 0.5)  # pauses inside one question (between its two parts)
SWEEP_TRAILING_MS = (300, 350, 400, 450, 500, 600, 700, 800, 1000, 1200)
SWEEP_PAUSES_S = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def bench_endpointing() -> dict:
    table = []
    for preset in VAD_PRESETS:
        config = VadConfig(preset=preset)
        for noise_name, noise_dbfs in NOISE_DBFS.items():
            delays, splits, misses, total = [], 0, 0, 0
            for seed, (first, second, voice) in enumerate(PHRASES):
                for pause in PAUSES_S:
                    parts = [1.0, speak(first, voice), pause, speak(second, voice), 2.0]
                    recording = scene(parts, noise_dbfs, seed=seed)
                    start, end = recording.speech[0][0], recording.speech[-1][1]
                    kept = [e for e in find_utterances(recording.samples, config) if isinstance(e, UtteranceEnded)]
                    overlapping = [e for e in kept if e.end > start and e.start < end]
                    total += 1
                    if not overlapping:
                        misses += 1
                        continue
                    splits += len(overlapping) > 1
                    delays.append(overlapping[-1].t - end)
            table.append({
                "preset": preset,
                "trailing_silence_ms": config.trailing_ms,
                "noise": noise_name,
                "noise_dbfs": noise_dbfs,
                "questions": total,
                "decision_delay_mean_s": round(float(np.mean(delays)), 3) if delays else None,
                "decision_delay_max_s": round(float(np.max(delays)), 3) if delays else None,
                "split_rate": round(splits / total, 3),
                "miss_rate": round(misses / total, 3),
            })
    noise_only = {
        name: sum(isinstance(e, UtteranceEnded) for e in find_utterances(scene([60.0], dbfs).samples))
        for name, dbfs in NOISE_DBFS.items() if dbfs is not None
    }
    return {"speech_dbfs_rms": -20.0, "pauses_inside_questions_s": list(PAUSES_S), "table": table,
            "false_utterances_in_60s_of_noise_alone": noise_only}


def sweep_trailing_silence() -> dict:
    """Split rate of a question with one pause inside it, per trailing silence and pause length:
    the measurements the presets are chosen from."""
    result = {}
    for noise_name in ("clean", "snr10"):
        rows = {}
        for trailing in SWEEP_TRAILING_MS:
            config = VadConfig(trailing_silence_ms=trailing)
            rates = []
            for pause in SWEEP_PAUSES_S:
                splits = 0
                for seed, (first, second, voice) in enumerate(PHRASES):
                    recording = scene([1.0, speak(first, voice), pause, speak(second, voice), 2.0],
                                      NOISE_DBFS[noise_name], seed=seed)
                    start, end = recording.speech[0][0], recording.speech[-1][1]
                    kept = [e for e in find_utterances(recording.samples, config)
                            if isinstance(e, UtteranceEnded) and e.end > start and e.start < end]
                    splits += len(kept) > 1
                rates.append(round(splits / len(PHRASES), 2))
            rows[str(trailing)] = rates
        result[noise_name] = rows
    return {"pauses_s": list(SWEEP_PAUSES_S), "split_rate_by_trailing_silence_ms": result}


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def bench_playback(replies: int) -> dict:
    from voicechat.audio.player import DECODER_RATE, Player

    token = 1764  # one speech token of decoder audio (80 ms)
    tone = (0.2 * np.sin(2 * np.pi * 220 * np.arange(token) / DECODER_RATE)).astype(np.float32)
    first_audio = []
    with Player() as speaker:
        for _ in range(replies):
            speaker.begin()
            pushed = time.monotonic()
            speaker.push(tone)
            speaker.end()
            speaker.wait(timeout=5)
            first_audio.append(speaker.first_audio_at - pushed)
        # 10 s replies while another process keeps a core busy: pushed one token per 80 ms (exactly
        # real time, the worst case), and in decoder-like chunks of 10 tokens at twice real time
        paced = _stream_reply(speaker, tone, tokens_per_push=1, seconds_per_push=0.08)
        chunked = _stream_reply(speaker, tone, tokens_per_push=10, seconds_per_push=0.4)
        rate, latency = speaker.rate, speaker.latency_s
    first = np.array(first_audio) * 1000
    return {
        "device_rate": rate,
        "device_latency_ms": round(latency * 1000, 1),
        "first_push_to_first_sample_at_device_ms": {
            "median": round(float(np.median(first)), 1), "p90": round(float(np.percentile(first, 90)), 1),
            "replies": replies},
        "underruns_10s_reply_other_core_busy": {
            "one_token_per_80ms_exactly_real_time": paced,
            "ten_tokens_per_400ms_twice_real_time": chunked},
    }


def _stream_reply(speaker, token_audio: np.ndarray, tokens_per_push: int, seconds_per_push: float) -> dict:
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    busy.start()
    try:
        speaker.begin()
        start = time.monotonic()
        pushes = 125 // tokens_per_push
        for index in range(pushes):
            speaker.push(np.tile(token_audio, tokens_per_push))
            time.sleep(max(0.0, start + (index + 1) * seconds_per_push - time.monotonic()))
        speaker.end()
        speaker.wait(timeout=15)
    finally:
        stop.set()
        busy.join()
    return {"underruns": speaker.underruns, "portaudio_output_underflows": speaker.device_underflows}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_idle_listening(seconds: float) -> dict:
    from voicechat.audio.listener import Listener

    events: queue.Queue = queue.Queue()
    before = _rss_mib()
    listener = Listener(AudioConfig(), events.put)
    listener.start()
    try:
        events.get(timeout=10)  # running
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        overflows = listener.capture.overflows
    finally:
        listener.stop()
    return {
        "seconds": seconds,
        "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
        "rss_mib_process": round(_rss_mib(), 1),
        "rss_mib_added_by_listening": round(_rss_mib() - before, 1),
        "overflows": overflows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer replies, shorter idle run")
    args = parser.parse_args()
    result = {"endpointing": bench_endpointing(), "trailing_silence_sweep": sweep_trailing_silence()}
    server = start_private_server()
    previous = use_server(server)
    try:
        result["playback"] = bench_playback(replies=5 if args.quick else 20)
        result["idle_listening"] = bench_idle_listening(5.0 if args.quick else 20.0)
    finally:
        server.stop()
        restore(previous)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
