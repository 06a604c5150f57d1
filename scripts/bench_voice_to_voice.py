"""Voice to voice in the real TUI: end of the spoken question -> first sample of the reply heard,
before (silence endpointing after 700 ms, no preemptive work, no echo cancellation) and after (the
defaults: Smart Turn, the reply prepared in the pause, echo cancellation), in the same run; and
what listening costs: the end-of-turn model and the echo canceller per 10 ms of audio, and the
idle app's CPU share. Prints JSON.

The app is ``python -m voicechat`` in a tmux terminal (its screen is drawn on stdout and stderr,
neither redirected) on the tiny models (retrieval end to end over knowledge/), its microphone and
speaker the virtual devices of a private PulseAudio server (tests/support/pulse.py). Questions said
by a Piper voice (tests/support/piper_speech.py) are played into the virtual microphone, one at a
time, the next once the reply has been played and the turn logged. The configurations take turns
in blocks of ``--block`` questions (before, after, before, ...; the app restarted for each block),
so both meet the same questions and the machine's load at about the same times.

Timing: two parec recorders, identically configured, record the monitor of the microphone's sink
(what the app's microphone hears) and of the speaker's sink (what the app plays, as rendered). Each
recorder stamps the chunks it reads with time.monotonic(); a sample's time is its index over the
rate plus the smallest (arrival - index / rate) of the chunks within 2 s of it, i.e. the recorder's
least-delayed delivery. Both recorders see the same server-to-reader delay, so it cancels in the
difference. The question's end is the known end of the played speech, located exactly in the
microphone recording (the recorded samples are the played ones: the first sample above -60 dBFS
in the recording is the clip's first one); so pacat's playback buffering is not counted, and the
app's capture latency and its output latency are, as a listener would hear them. The reply's first
sample is the first one above -60 dBFS on the speaker monitor after the question's end. Residual
error: about one recorder fragment (10-20 ms). The app's own estimate (``first_heard_ms`` in its
session log, from the endpointer's end-of-speech estimate to the device's reported play time) is
given beside it.

Listening cost, in this process on the microphone audio recorded during the run (a 60 s span from
the first question, with the speaker's audio of the same span as the canceller's far end): the
endpointer with and without the end-of-turn detector, Silero VAD and Smart Turn timed inside it, and
the echo canceller on 40 ms blocks; thread CPU time per 10 ms of audio and as % of one core. And
the app's own CPU (its process and children, /proc) over ``--idle-s`` of listening to silence.

    python scripts/bench_voice_to_voice.py [--questions 20] [--block 5] [--repo OLD_CHECKOUT]

``--repo`` adds a third configuration: an older checkout of voicechat (for instance a git worktree
at an earlier commit) with its own tiny models and its default audio settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.pulse import MIC_RATE, MIC_SINK, SPEAKER, SPEAKER_RATE  # noqa: E402

REPLY_TOKENS = 40  # generation.max_new_tokens: replies are played in real time
LOUD = 1e-3  # -60 dBFS: a sample above it is sound (the null sinks are digital silence otherwise)
LEAD_S = 0.3  # silence played before each question
REPLY_QUIET_S = 1.0  # the reply is over after this much silence on the speaker
TURN_TIMEOUT_S = 240.0
START_TIMEOUT_S = 300.0
COST_SPAN_S = 60.0
BLOCK_S = 0.04  # audio.capture_block_ms


# --- pure helpers (tests/test_bench_voice_to_voice.py) --------------------------------------------


def first_loud(samples: np.ndarray, start: int = 0, threshold: float = LOUD) -> int | None:
    """Index of the first sample from ``start`` whose magnitude exceeds ``threshold``."""
    loud = np.flatnonzero(np.abs(samples[start:]) > threshold)
    return None if loud.size == 0 else start + int(loud[0])


def last_loud(samples: np.ndarray, threshold: float = LOUD) -> int | None:
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return None if loud.size == 0 else int(loud[-1])


def sample_time(arrivals: list[tuple[int, float]], index: int, rate: int, window_s: float = 2.0) -> float:
    """The monotonic time of sample ``index`` of a stream whose chunks ended at sample counts
    ``n`` arriving at times ``t`` (``arrivals``: (n, t) pairs): the least-delayed delivery among
    the chunks within ``window_s`` of it gives the stream's offset there (samples lost before, or
    a reader that fell behind, only make other chunks look late)."""
    near = [t - n / rate for n, t in arrivals if abs(n - index) <= window_s * rate]
    if not near:
        near = [min(arrivals, key=lambda a: abs(a[0] - index))]
        near = [near[0][1] - near[0][0] / rate]
    return min(near) + index / rate


def sample_at(arrivals: list[tuple[int, float]], t: float, rate: int) -> int:
    """The inverse of :func:`sample_time`: the index of the sample played at time ``t``."""
    guess = 0
    for n, arrived in arrivals:
        if arrived <= t:
            guess = n
    guess = max(0, guess)
    return max(0, guess + round((t - sample_time(arrivals, guess, rate)) * rate))


def block_order(configs: list[str], questions: int, block: int) -> list[tuple[str, list[int]]]:
    """(config, question numbers) blocks in turn: every config hears every question, the configs
    alternating block by block, and which goes first alternating round by round."""
    order = []
    for round_number, start in enumerate(range(0, questions, block)):
        numbers = list(range(start, min(start + block, questions)))
        names = configs if round_number % 2 == 0 else configs[::-1]
        order.extend((name, numbers) for name in names)
    return order


def summary(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"p50": round(float(np.percentile(values, 50)), 1), "p90": round(float(np.percentile(values, 90)), 1),
            "min": round(float(min(values)), 1), "max": round(float(max(values)), 1), "n": len(values)}


def per_10ms(cpu_s: float, audio_s: float) -> dict:
    """A stage's cost per 10 ms of audio, in ms and as % of one core."""
    ms = 1000 * cpu_s / (audio_s * 100)
    return {"ms_per_10ms": round(ms, 4), "core_percent": round(ms * 10, 2)}


# --- the sound server's recordings ----------------------------------------------------------------


class TimedRecording:
    """A parec of a sink's monitor, read continuously, each chunk stamped on arrival."""

    def __init__(self, env: dict, source: str, rate: int) -> None:
        self.rate = rate
        self.process = subprocess.Popen(
            ["parec", f"--device={source}", "--format=s16le", f"--rate={rate}", "--channels=1",
             "--latency-msec=20"], env=env, stdout=subprocess.PIPE)
        self.arrivals: list[tuple[int, float]] = []
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.process.stdout.read1(65536):
            now = time.monotonic()
            with self._lock:
                self._data.extend(chunk)
                self.arrivals.append((len(self._data) // 2, now))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._data) // 2

    def samples(self, start: int = 0) -> np.ndarray:
        with self._lock:
            data = bytes(self._data[2 * start: len(self._data) // 2 * 2])
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768

    def time_of(self, index: int) -> float:
        with self._lock:
            arrivals = list(self.arrivals)
        return sample_time(arrivals, index, self.rate)

    def index_at(self, t: float) -> int:
        with self._lock:
            arrivals = list(self.arrivals)
        return sample_at(arrivals, t, self.rate)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


class SoundServer:
    """The private PulseAudio server with both monitors recorded from the start."""

    def __init__(self) -> None:
        from tests.support.pulse import start_private_server

        self.pulse = start_private_server()
        self.mic = TimedRecording(self.pulse.env, f"{MIC_SINK}.monitor", MIC_RATE)
        self.speaker = TimedRecording(self.pulse.env, f"{SPEAKER}.monitor", SPEAKER_RATE)

    def play(self, clip: np.ndarray) -> int:
        """Plays a question into the microphone; returns the microphone recording's index before it."""
        before = self.mic.count
        self.pulse.play(clip, MIC_RATE).wait(timeout=120)
        return before

    def stop(self) -> None:
        self.mic.stop()
        self.speaker.stop()
        self.pulse.stop()
        shutil.rmtree(self.pulse.root, ignore_errors=True)


# --- the app in a terminal ------------------------------------------------------------------------


@dataclass
class Setup:
    """One configuration of the app: the checkout it runs and its config file."""

    name: str
    repo: Path
    config: Path
    sessions: Path
    audio: dict = field(default_factory=dict)


def prepare(name: str, repo: Path, folder: Path, audio: dict, turn_model: Path | None) -> Setup:
    """Tiny models written by ``repo``'s generator, knowledge/ indexed by its CLI, and a config."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    models = folder / "models"
    subprocess.run([sys.executable, str(repo / "scripts" / "make_test_models.py"), "--size", "tiny",
                    "--out", str(models)], env=env, check=True, stdout=sys.stderr)
    data = yaml.safe_load((models / "config.yaml").read_text(encoding="utf-8"))
    data["retrieval"] = {"rag": "e2e", "index_dir": str(folder / "index"), "knowledge_dir": str(REPO / "knowledge")}
    data["sessions"] = {"save": True, "dir": str(folder / "sessions")}
    data.setdefault("generation", {})["max_new_tokens"] = REPLY_TOKENS
    if turn_model is not None:
        data.setdefault("models", {})["turn"] = {"source": str(turn_model)}
    data["audio"] = {**data.get("audio", {}), **audio}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    # python -m puts the working folder first on the path: run it in the checkout meant
    subprocess.run([sys.executable, "-m", "voicechat", "--config", str(path), "index", str(REPO / "knowledge")],
                   env=env, check=True, stdout=sys.stderr, cwd=repo)
    return Setup(name, repo, path, folder / "sessions", audio)


class App:
    """``python -m voicechat`` in a tmux session on a tmux server of its own."""

    starts = 0

    def __init__(self, setup: Setup, pulse_env: dict, folder: Path) -> None:
        App.starts += 1
        self.name = f"bench-v2v-{os.getpid()}-{App.starts}-{setup.name}"
        env = {**pulse_env, "PYTHONPATH": str(setup.repo), "TERM": "xterm-256color",
               "XDG_STATE_HOME": str(folder / "state")}
        command = f"{sys.executable} -m voicechat --config {setup.config}; sleep 60"
        subprocess.run(["tmux", "-L", self.name, "new-session", "-d", "-s", self.name, "-x", "160", "-y", "45",
                        "-c", str(setup.repo), command], env=env, check=True, timeout=30)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "LISTENING" not in self.screen():  # a terminal offers no event to wait on
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start listening; its screen:\n{self.screen()}")
            time.sleep(0.5)

    def pid(self) -> int:
        shell = self.tmux("display-message", "-p", "-t", self.name, "#{pane_pid}").strip()
        children = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True, timeout=10).stdout.split()
        return int(children[0])

    def quit(self) -> None:
        self.tmux("send-keys", "-t", self.name, "q")
        time.sleep(2)
        self.tmux("kill-server")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its descendants so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def idle_cpu_percent(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start), 2)


def logged_turns(sessions: Path) -> list[dict]:
    turns = []
    for log in sorted(sessions.glob("*/turns.jsonl")):
        turns.extend(json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip())
    return turns


# --- one turn -------------------------------------------------------------------------------------


@dataclass
class Question:
    number: int
    clip: np.ndarray  # lead silence + the speech, 16 kHz float
    first: int  # index in the clip of its first sample above LOUD
    end: int  # index in the clip just after the speech


def questions(count: int) -> list[Question]:
    from tests.support.piper_speech import QUESTIONS, say

    made = []
    for number, (first, second) in enumerate(QUESTIONS[:count]):
        speech = say(f"{first} {second}")
        clip = np.concatenate([np.zeros(int(LEAD_S * MIC_RATE), np.float32), speech])
        quantised = np.round(clip * 32768) / 32768
        made.append(Question(number, clip, first_loud(quantised), clip.size))
    return made


def wait_for(condition, timeout: float, what: str, app: App | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # the app's log and the recordings offer no event to wait on
        if time.monotonic() > deadline:
            screen = f"; the app's screen:\n{app.screen()}" if app is not None else ""
            raise RuntimeError(f"timed out waiting for {what}{screen}")
        time.sleep(0.2)


def reply_over(speaker: TimedRecording, since: int) -> bool:
    """The speaker played something after ``since`` and has been silent for REPLY_QUIET_S."""
    recorded = speaker.samples(since)
    last = last_loud(recorded)
    return last is not None and recorded.size - last >= REPLY_QUIET_S * speaker.rate


def ask(server: SoundServer, setup: Setup, question: Question, app: App) -> dict:
    """Plays one question and waits for its reply to be played and logged; the turn's figures."""
    logged = len(logged_turns(setup.sessions))
    speaker_before = server.speaker.count
    mic_before = server.play(question.clip)
    onset = first_loud(server.mic.samples(), mic_before)
    if onset is None:
        raise RuntimeError("the question was not heard on the microphone's sink")
    end_index = onset + (question.end - question.first)
    wait_for(lambda: server.mic.count > end_index, 30, "the question to be recorded")
    end_t = server.mic.time_of(end_index)
    wait_for(lambda: len(logged_turns(setup.sessions)) > logged, TURN_TIMEOUT_S, "the turn to be logged", app)
    wait_for(lambda: reply_over(server.speaker, speaker_before), TURN_TIMEOUT_S, "the reply to end", app)
    wait_for(lambda: "LISTENING" in app.screen(), TURN_TIMEOUT_S, "the app to listen again", app)
    from_index = max(speaker_before, server.speaker.index_at(end_t))
    heard = first_loud(server.speaker.samples(), from_index)
    record = logged_turns(setup.sessions)[-1]
    timings = record.get("timings", {})
    return {
        "question": question.number,
        "first_heard_ms": None if heard is None else round(1000 * (server.speaker.time_of(heard) - end_t), 1),
        "app_first_heard_ms": timings.get("first_heard_ms"),
        "app_endpoint_delay_ms": timings.get("endpoint_delay_ms"),
        "preemptive_ms": timings.get("preemptive_ms"),
        "end_t": end_t,
    }


def run_block(server: SoundServer, setup: Setup, block: list[Question], folder: Path, idle_s: float) -> dict:
    app = App(setup, server.pulse.env, folder)
    try:
        app.wait_until_listening()
        time.sleep(2.0)  # the meters settle
        idle = idle_cpu_percent(app.pid(), idle_s) if idle_s > 0 else None
        turns = []
        for question in block:
            turn = ask(server, setup, question, app)
            turns.append(turn)
            print(f"{setup.name} question {question.number + 1}: heard after {turn['first_heard_ms']} ms "
                  f"(app: {turn['app_first_heard_ms']})", file=sys.stderr)
    finally:
        app.quit()
    return {"idle_cpu_percent": idle, "turns": turns}


# --- the cost of listening, in this process -------------------------------------------------------


class Timed:
    """Wraps a callable and adds up its thread CPU time."""

    def __init__(self, function) -> None:
        self.function = function
        self.cpu_s = 0.0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        start = time.thread_time()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.cpu_s += time.thread_time() - start
            self.calls += 1


class TimedApm:
    """An echo canceller whose frames are timed."""

    def __init__(self, apm) -> None:
        self.apm = apm
        self.process = Timed(apm.process)

    @property
    def stream_delay_ms(self) -> int:
        return self.apm.stream_delay_ms

    @stream_delay_ms.setter
    def stream_delay_ms(self, value: int) -> None:
        self.apm.stream_delay_ms = value


def listening_cost(mic: np.ndarray, far: np.ndarray, config_path: Path) -> dict:
    """Per 10 ms of ``mic`` (16 kHz float, as the microphone heard it), with ``far`` (16 kHz float,
    what the speaker played at the same time) as the canceller's reference."""
    from voicechat.audio.echo import EchoCanceller, PlayedAudio, webrtc_aec3
    from voicechat.audio.endpointer import Endpointer
    from voicechat.audio.turn import load_turn_detector
    from voicechat.config import load_config

    config = load_config(config_path)
    pcm = np.clip(np.round(mic * 32768), -32768, 32767).astype(np.int16)
    audio_s = pcm.size / MIC_RATE
    step = int(BLOCK_S * MIC_RATE)
    blocks = [pcm[i:i + step] for i in range(0, pcm.size - step + 1, step)]

    def endpoint(turn) -> tuple[float, int]:
        endpointer = Endpointer(config.audio.vad, turn=turn)
        start, ends = time.thread_time(), 0
        for block in blocks:
            ends += sum(type(e).__name__ == "UtteranceEnded" for e in endpointer.push(block))
        return time.thread_time() - start, ends

    silence_cpu, silence_ends = endpoint(None)
    detector, why = load_turn_detector(config)
    if detector is None:
        raise RuntimeError(why)
    detector.silero.push = Timed(detector.silero.push)
    detector.model.probability = Timed(detector.model.probability)
    smart_cpu, smart_ends = endpoint(detector)

    played = PlayedAudio()
    canceller = EchoCanceller(TimedApm(webrtc_aec3()), played)
    playing = np.zeros(len(blocks), bool)
    start = time.thread_time()
    for index, block in enumerate(blocks):
        t_end = (index + 1) * BLOCK_S
        reference = far[index * step:(index + 1) * step]
        playing[index] = bool(np.any(np.abs(reference) > LOUD))
        played.add(t_end - BLOCK_S, reference.astype(np.float32), MIC_RATE, 0.0)
        canceller.process(block, t_end)
    canceller_cpu = time.thread_time() - start
    return {
        "audio_s": round(audio_s, 1),
        "speaker_playing_share": round(float(playing.mean()), 3),
        "endpointer_silence_mode": {**per_10ms(silence_cpu, audio_s), "utterances": silence_ends},
        "endpointer_smart_mode": {**per_10ms(smart_cpu, audio_s), "utterances": smart_ends},
        "silero_vad": per_10ms(detector.silero.push.cpu_s, audio_s),
        "smart_turn": {**per_10ms(detector.model.probability.cpu_s, audio_s),
                       "calls": detector.model.probability.calls,
                       "ms_per_call": round(1000 * detector.model.probability.cpu_s
                                            / max(1, detector.model.probability.calls), 2)},
        "end_of_turn_model_total": per_10ms(detector.silero.push.cpu_s + detector.model.probability.cpu_s, audio_s),
        "echo_canceller": {**per_10ms(canceller_cpu, audio_s),
                           "aec3_only": per_10ms(canceller.apm.process.cpu_s, audio_s)},
    }


def recorded_span(server: SoundServer, start_t: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The microphone's and the speaker's audio (both 16 kHz) of the same span of time."""
    from voicechat.audio.resample import to_model_input

    mic_start = server.mic.index_at(start_t)
    mic = server.mic.samples(mic_start)[: int(seconds * MIC_RATE)]
    speaker_start = server.speaker.index_at(start_t)
    speaker = server.speaker.samples(speaker_start)[: int(seconds * SPEAKER_RATE)]
    far = to_model_input(speaker[:, None], SPEAKER_RATE)
    return mic, np.pad(far, (0, max(0, mic.size - far.size)))[: mic.size]


# --- the run --------------------------------------------------------------------------------------


BEFORE = {"turn": "silence", "preemptive": False, "echo_cancellation": False,
          "vad": {"preset": "default", "trailing_silence_ms": 700}}
AFTER: dict = {}  # the defaults: turn smart, preemptive on, echo cancellation on


def config_report(setup: Setup, blocks: list[dict]) -> dict:
    turns = [t for b in blocks for t in b["turns"]]
    return {
        "audio": setup.audio or "defaults",
        "checkout": "this one" if setup.repo == REPO else str(setup.repo),
        "end_of_question_to_first_heard_ms": summary([t["first_heard_ms"] for t in turns]),
        "app_reported_first_heard_ms": summary([t["app_first_heard_ms"] for t in turns]),
        "measured_minus_app_reported_ms": summary(  # how well the app's own estimate holds
            [t["first_heard_ms"] - t["app_first_heard_ms"] for t in turns
             if t["first_heard_ms"] is not None and t["app_first_heard_ms"] is not None]),
        "app_end_of_speech_to_confirmation_ms": summary([t["app_endpoint_delay_ms"] for t in turns]),
        "turns_started_in_the_pause": sum(t["preemptive_ms"] is not None for t in turns),
        "idle_listening_cpu_percent": [b["idle_cpu_percent"] for b in blocks if b["idle_cpu_percent"] is not None],
        "turns": [{k: v for k, v in t.items() if k != "end_t"} for t in turns],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--block", type=int, default=5, help="questions per app start")
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle listening measured per config")
    parser.add_argument("--repo", type=Path, help="an older voicechat checkout, run as a third configuration")
    args = parser.parse_args()
    if shutil.which("tmux") is None or shutil.which("parec") is None:
        print("bench_voice_to_voice needs tmux and PulseAudio (pulseaudio, pulseaudio-utils)", file=sys.stderr)
        return 1
    if args.repo is not None and not (args.repo / "voicechat" / "__main__.py").is_file():
        print(f"--repo: {args.repo} is not a voicechat checkout", file=sys.stderr)
        return 1
    from tests.support.piper_speech import smart_turn_file

    turn_model = smart_turn_file()
    if turn_model is None:
        print("the Smart Turn model could not be fetched (scripts/fetch_turn_model.py)", file=sys.stderr)
        return 1
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    asked = questions(args.questions)
    folder = Path(tempfile.mkdtemp(prefix="bench-v2v-"))
    server = SoundServer()
    try:
        setups = [prepare("before", REPO, folder / "before", BEFORE, turn_model),
                  prepare("after", REPO, folder / "after", AFTER, turn_model)]
        if args.repo is not None:
            setups.append(prepare("old_checkout", args.repo.resolve(), folder / "old", {}, None))
        by_name = {s.name: s for s in setups}
        results: dict[str, list[dict]] = {s.name: [] for s in setups}
        measured_idle: set[str] = set()
        for name, numbers in block_order(list(by_name), len(asked), args.block):
            idle_s = 0.0 if name in measured_idle else args.idle_s
            measured_idle.add(name)
            results[name].append(run_block(server, by_name[name], [asked[n] for n in numbers], folder, idle_s))
        first = min(t["end_t"] for blocks in results.values() for b in blocks for t in b["turns"])
        mic, far = recorded_span(server, first - 2.0, COST_SPAN_S)
        cost = listening_cost(mic, far, by_name["after"].config)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "models": "tiny, random weights; retrieval e2e over knowledge/; replies up to "
                  f"{REPLY_TOKENS} tokens",
        "voice": "Piper en_US-joe-medium", "questions": len(asked), "block": args.block,
        "uptime_at_start": uptime,
        "uptime_at_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(),
        **{name: config_report(by_name[name], blocks) for name, blocks in results.items()},
        "listening_cost_in_process": cost,
    }
    before, after = (result[k]["end_of_question_to_first_heard_ms"] for k in ("before", "after"))
    if before and after:
        result["saved_p50_ms"] = round(before["p50"] - after["p50"], 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
