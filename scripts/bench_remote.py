"""Benchmark: the remote engine on loopback with the tiny models.

One engine server (`voicechat serve --engine`, its own process) and 1, 2, 4 and 8 concurrent
conversations against it; each turn is a spoken question (2 s) in a fresh conversation. Measured
at the client: end of the question -> first reply audio chunk, p50/p90; the turn's own network
stage (``network_ms``: the question's way there and the first chunk's way back); and the same turn
in this process (no server) for the added cost of the remote hop. Also the bytes per second of
reply audio on the wire. Prints JSON.

    python scripts/bench_remote.py [--turns 16] [--levels 1,2,4,8] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

READY = "serving the engine on "


def question_audio(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.2 * np.sin(2 * np.pi * 140 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def one_turn(session_factory, audio: np.ndarray) -> tuple[float, float | None, int, float]:
    """(end of question -> first audio ms, network ms, wire bytes of the reply audio, its seconds)."""
    from voicechat.engine import TurnInput
    from voicechat.events import AudioChunk
    from voicechat.remote import codec, protocol

    chunks: list[AudioChunk] = []
    session = session_factory(lambda event: chunks.append(event) if isinstance(event, AudioChunk) else None)
    result = session.run_turn(TurnInput(audio=audio, speech_end_t=time.monotonic()))
    timings = result.finished.timings
    wire = sum(len(protocol.pack({"type": "event", "event": codec.encode(c)[0]}, codec.encode(c)[1])) for c in chunks)
    rate = chunks[0].rate if chunks else 1
    return timings.first_audio_ms, timings.network_ms, wire, result.reply_audio.size / rate


def in_process(config, audio: np.ndarray, turns: int) -> list[float]:
    from voicechat.assemble import load_components
    from voicechat.session import ConversationSession

    parts = load_components(config)
    try:
        def factory(emit):
            session = ConversationSession(config, emit, save=False)
            session.ready(parts)
            return session

        one_turn(factory, audio)  # warm-up
        return [one_turn(factory, audio)[0] for _ in range(turns)]
    finally:
        parts.close()


def remote(config, url: str, audio: np.ndarray, conversations: int, turns: int) -> dict:
    from voicechat.remote.client import EngineLink, RemoteEngine
    from voicechat.session import ConversationSession

    results: list[tuple] = []
    lock = threading.Lock()
    start = threading.Barrier(conversations)

    def talk() -> None:
        link = EngineLink.open(url, None)

        def factory(emit):
            session = ConversationSession(config, emit, save=False)
            session.ready(None, engine=lambda engine_emit: RemoteEngine(link, engine_emit))
            return session

        one_turn(factory, audio)  # warm-up
        start.wait()
        for _ in range(max(1, turns // conversations)):
            measured = one_turn(factory, audio)
            with lock:
                results.append(measured)
        link.close()

    threads = [threading.Thread(target=talk) for _ in range(conversations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = [r[0] for r in results]
    network = [r[1] for r in results if r[1] is not None]
    return {"conversations": conversations, "turns": len(results),
            "first_audio_ms_p50": percentile(first, 50), "first_audio_ms_p90": percentile(first, 90),
            "network_ms_p50": percentile(network, 50), "network_ms_p90": percentile(network, 90),
            "wire_bytes_per_audio_s": round(sum(r[2] for r in results) / max(1e-9, sum(r[3] for r in results)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=16, help="measured turns per level")
    parser.add_argument("--levels", default="1,2,4,8", help="concurrent conversations")
    parser.add_argument("--models", type=Path, help="tiny models folder (default: generated now)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from voicechat.config import load_config

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        models = args.models
        if models is None:
            from voicechat.testing.generator import generate

            models = Path(tmp) / "models"
            generate(models, "tiny", seed=0)
        data = yaml.safe_load((models / "config.yaml").read_text())
        data["generation"] = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
        data["retrieval"] = {"rag": "off"}
        data["sessions"] = {"save": False}
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        audio = question_audio()
        here = in_process(config, audio, args.turns)
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "voicechat", "--config", str(path), "--threads", "1",
                                   "serve", "--engine", "--port", "0"], stdout=subprocess.PIPE, stderr=log,
                                  text=True, env={"PYTHONPATH": str(REPO), **__import__("os").environ})
        try:
            line = ""
            while not line.startswith(READY):
                line = server.stdout.readline()
                if not line:
                    raise SystemExit((Path(tmp) / "server.log").read_text())
            url = line[len(READY):].split()[0]
            levels = [remote(config, url, audio, int(n), args.turns) for n in args.levels.split(",")]
        finally:
            server.terminate()
            server.wait(timeout=30)
    single = levels[0]
    print(json.dumps({
        "models": "tiny", "question_s": 2.0, "max_new_tokens": args.max_new_tokens,
        "in_process": {"turns": len(here), "first_audio_ms_p50": percentile(here, 50),
                       "first_audio_ms_p90": percentile(here, 90)},
        "remote": levels,
        # the hop's own cost, measured in each turn: the question's way there and the first chunk's back
        "remote_hop_added_ms_p50": single["network_ms_p50"],
        "remote_hop_added_ms_p90": single["network_ms_p90"],
        # the whole turn against the in-process turn: includes the noise of other work on the cores
        "first_audio_remote_minus_in_process_ms_p50": round(single["first_audio_ms_p50"] - percentile(here, 50), 2),
        "note": "one server process and the client share this machine's cores; the server runs one LM "
                "generation at a time (the local backend), so concurrent turns queue at the LM",
    }, indent=2))


if __name__ == "__main__":
    main()
