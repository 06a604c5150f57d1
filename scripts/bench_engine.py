"""Conversation benchmarks; prints JSON.

- orchestration: with instantaneous stand-in stages, the engine's own cost from the end of the
  user's speech to the first audio sample handed to the speaker (target <= 20 ms);
- tiny_turns: the per-stage breakdown of whole turns on the tiny random-weight models (CPU);
- idle_tui: CPU share and memory of `voicechat` idle-listening in a real terminal (tmux) with a
  PulseAudio virtual microphone.

Run from the repository root: python scripts/bench_engine.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voicechat.config import Config, load_config  # noqa: E402
from voicechat.engine import Components, Engine, EngineConfig, Settings, TurnInput  # noqa: E402
from voicechat.glm.prompt import Conversation  # noqa: E402
from voicechat.events import TurnTimings  # noqa: E402

SPEECH_TOKENS = list(range(100))


class InstantTokenizer:
    def tokenize(self, samples: np.ndarray, rate: int, cancel=None) -> list[int]:
        return SPEECH_TOKENS[: max(1, int(len(samples) / rate * 12.5))]


class InstantBackend:
    """Replies at once: 13 text tokens, then speech tokens, as the model interleaves them."""

    def __init__(self, parts: Components) -> None:
        tokenizer = parts.text_tokenizer
        self.reply = (tokenizer.encode("Green tea steeps for two to three minutes at eighty.")[:13]
                      + tokenizer.audio_ids(SPEECH_TOKENS[:26]) + [tokenizer.special.user])

    def stream(self, prompt_ids, params, cancel):
        yield from self.reply

    def close(self) -> None: ...


class InstantDecoder:
    sample_rate = 22050

    def session(self, config, cancel=None):
        return InstantSession()


class InstantSession:
    def __init__(self) -> None:
        self.pending = 0

    def push(self, tokens):
        self.pending += len(tokens)
        if self.pending < 10:
            return np.zeros(0, np.float32)
        audio, self.pending = np.zeros(self.pending * 1764, np.float32), 0
        return audio

    def finish(self):
        return np.zeros(self.pending * 1764, np.float32)

    def cancel(self) -> None: ...


def models(out: Path) -> Config:
    from voicechat.testing.generator import generate

    return load_config(generate(out, "tiny", seed=0))


def bench_orchestration(config: Config, turns: int) -> dict:
    from voicechat.assemble import load_components

    config = replace(config, retrieval=replace(config.retrieval, rag="off"))
    real = load_components(config)
    parts = replace(real, backend=InstantBackend(real), speech_tokenizer=InstantTokenizer(), decoder=InstantDecoder())
    engine = Engine(EngineConfig.from_config(config), parts, lambda event: None)
    audio = np.zeros(16000 * 2, np.float32)
    firsts = []
    for _ in range(turns):
        result = engine.run_turn(TurnInput(audio=audio, speech_end_t=time.monotonic()), Settings.from_config(config),
                                 Conversation())
        firsts.append(result.finished.timings.first_audio_ms)
    real.close()
    return {"endpoint_to_first_audio_ms": _summary(firsts), "turns": turns}


def bench_tiny_turns(config: Config, turns: int) -> dict:
    from voicechat.assemble import load_components
    from voicechat.cli import main

    with tempfile.TemporaryDirectory() as folder:
        import yaml

        data = yaml.safe_load(Path(config.source).read_text())
        data["retrieval"] = {"index_dir": f"{folder}/index"}
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
            main(["--config", str(path), "index", str(REPO / "knowledge")])
        parts = load_components(config)
        engine = Engine(EngineConfig.from_config(config), parts, lambda event: None)
        speech = _espeak("How long should green tea steep?")
        rows = []
        for _ in range(turns):
            question = TurnInput(audio=speech, speech_end_t=time.monotonic())
            rows.append(engine.run_turn(question, Settings.from_config(config), Conversation()).finished.timings)
        parts.close()
    fields = [f for f in asdict(TurnTimings()) if f not in ("underruns",)]
    return {"turns": turns, "question_s": round(speech.size / 16000, 2),
            **{f: _summary([getattr(r, f) for r in rows if getattr(r, f) is not None]) for f in fields}}


def bench_idle_tui(config: Config, seconds: float) -> dict:
    import psutil

    from tests.support.pulse import start_private_server

    server = start_private_server()
    name = "voicechat-bench"
    try:
        env = {**server.env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "45",
                        f"{sys.executable} -m voicechat --config {config.source} --rag off --no-save"],
                       env=env, check=True)
        deadline = time.monotonic() + 300
        while "LISTENING" not in _screen(name):
            if time.monotonic() > deadline:
                raise RuntimeError("voicechat did not start listening")
            time.sleep(0.5)
        pid = int(subprocess.run(["tmux", "list-panes", "-t", name, "-F", "#{pane_pid}"],
                                 capture_output=True, text=True).stdout.split()[0])
        process = psutil.Process(pid)
        process.cpu_percent()
        time.sleep(seconds)
        cpu = process.cpu_percent()
        rss = process.memory_info().rss / 2**20
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        server.stop()
    return {"seconds": seconds, "cpu_percent_of_one_core": round(cpu, 2), "rss_mib": round(rss, 1),
            "models": "tiny (idle cost does not depend on model size, except memory)"}


def _screen(name: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout


def _espeak(text: str) -> np.ndarray:
    from tests.support.speech import speak

    return speak(text).astype(np.float32)


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    return {"p50": round(statistics.median(values), 2),
            "p90": round(values[min(len(values) - 1, int(0.9 * len(values)))], 2),
            "min": round(values[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        config = models(Path(folder) / "models")
        result = {
            "orchestration": bench_orchestration(config, 20 if args.quick else 100),
            "tiny_turns": bench_tiny_turns(config, 3 if args.quick else 10),
            "idle_tui": bench_idle_tui(config, 5.0 if args.quick else 20.0),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
