"""Echo cancellation for barge-in on open speakers: WebRTC AEC3 through the bindings on the package
index, measured through voicechat's EchoCanceller (the same pairing of microphone and played audio
by their time stamps that a conversation uses), printed as JSON.

Two echo paths, each with a reply spoken by espeak-ng as the far end and another espeak-ng voice as
the near end (the user):

- ``synthetic``: the echo made in memory (a room impulse response, 0.5 direct gain, RT60 250 ms,
  80 ms delay, noise at -80 dBFS), fed block by block with the stamps a device would give;
- ``live``: a private PulseAudio server: the reply played by voicechat's Player into the virtual
  speaker, looped back into the virtual microphone 60 ms late and 6 dB quieter (PulseAudio's
  loopback, tests/support/pulse.py EchoPath), heard by voicechat's Listener; the user's question is
  played into the same microphone over it.

Per canceller (``none``: the raw microphone, today's input):

- ``erle_db``: echo return loss enhancement on the echo alone, after the first 1.5 s (convergence)
  and over all of it;
- ``near_end_correlation``: the user's speech in the output while both talk (normalised
  cross-correlation with the clean question at its best lag within 20 ms; 1 = kept intact);
- ``vad_speech_share_on_echo``: share of 30 ms frames webrtcvad (mode 2) calls speech in the echo;
- ``false_barge_ins_per_min``: utterances the endpointer starts on the echo alone, per minute of
  the assistant speaking; ``barge_in_detected`` / ``within_300ms``: questions spoken over the echo
  at 0 and -5 dB speech-to-echo that start an utterance (live: interrupt the reply), and how soon
  after the question's true onset;
- ``ms_per_10ms_frame``: CPU time of the canceller per 10 ms of audio, and the packages' installed
  size and licence.

``webrtc-apm`` 0.1.6 is listed with why it could not be measured (its only wheels are for Windows).

``--barge-in ALONE SPOKEN`` measures instead the rule that decides, while a reply plays, whether a
speech start is the user (voicechat/audio/barge_in.py, voicechat/audio/double_talk.py): live runs
with AEC3 on the echo path, the listener's barge-in off so that every reply plays whole (ALONE
replies alone, SPOKEN questions over a reply at each of 0 and -5 dB), then each run's cleaned
audio, as the canceller gave it, through voicechat's Listener again with the reply playing as it
did: before (any speech start interrupts), Silero VAD confirming alone, and after (Silero confirms,
and the double-talk detector, fed the microphone and played audio the canceller paired, decides
where the echo is expected: the default), with the detector's CPU time per 10 ms. Per rule: false barge-ins per minute of the reply alone after the canceller
converged (and how many would have become questions), and per level the share of questions that
interrupt, within 300 ms, latency p50/p90 from the question's onset, and replies cut by the echo
before the question began. ``--runs FILE`` keeps the live runs, or judges those kept again.

    python scripts/bench_aec.py [--live] [--trials 3] > aec.json
    python scripts/bench_aec.py --barge-in 24 12 --runs runs.pkl > barge_in.json
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.pulse import EchoPath, room_response, restore, start_private_server, use_server  # noqa: E402
from tests.support.speech import speak  # noqa: E402
from voicechat.audio.echo import FRAME, EchoCanceller, PlayedAudio, webrtc_aec3  # noqa: E402
from voicechat.audio.endpointer import Endpointer  # noqa: E402
from voicechat.audio.events import Interrupted, SpeechStarted, UtteranceEnded  # noqa: E402
from voicechat.config import AudioConfig, VadConfig  # noqa: E402

RATE = 16000
BLOCK = 640  # the microphone's 40 ms blocks
CONVERGED_S = 1.5
REPLY_DBFS = -20.0  # the reply's speech level
ECHO_GAIN_DB = -6.0  # the live echo path's gain (tests/support/pulse.py EchoPath)
REPLIES = [
    "Green tea should steep for two to three minutes in water just below boiling, then the leaves "
    "come out so that the cup does not turn bitter. Black tea takes longer, four or five minutes.",
    "The Eiffel Tower was finished in eighteen eighty nine for the world fair, and at first many "
    "artists in Paris wanted it taken down again, but it became the symbol of the city.",
    "To keep bread fresh, store it in a paper bag at room temperature and freeze what you will not "
    "eat within two days; the fridge makes it stale faster.",
]
QUESTIONS = [
    ("Wait, what about oolong tea?", "en-gb+f3"),
    ("Stop, tell me something else please.", "en-us+m7"),
    ("Hold on, how tall is it?", "en-gb+f2"),
]


# --- the candidates -------------------------------------------------------------------------------


class LivekitApm:
    """livekit's rtc.AudioProcessingModule (AEC3 + high-pass filter) behind voicechat's Apm protocol."""

    def __init__(self) -> None:
        from livekit import rtc

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self.stream_delay_ms = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = np.empty_like(near)
        for start in range(0, near.size, FRAME):
            reverse = self._rtc.AudioFrame(far[start:start + FRAME].tobytes(), RATE, 1, FRAME)
            self._apm.process_reverse_stream(reverse)
            self._apm.set_stream_delay_ms(self.stream_delay_ms)
            frame = self._rtc.AudioFrame(near[start:start + FRAME].tobytes(), RATE, 1, FRAME)
            self._apm.process_stream(frame)
            out[start:start + FRAME] = np.frombuffer(frame.data, dtype=np.int16)
        return out


class Passthrough:
    """No canceller: the raw microphone."""

    stream_delay_ms = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return near


def webrtc_apm():
    import webrtc_apm  # noqa: F401 - only its import is tried

    raise RuntimeError("imported, but no adapter written")


CANDIDATES = {"none": Passthrough, "pywebrtc-audio": webrtc_aec3, "livekit": LivekitApm, "webrtc-apm": webrtc_apm}
PACKAGES = {"pywebrtc-audio": ["pywebrtc-audio"], "livekit": ["livekit", "protobuf", "aiofiles", "types-protobuf"],
            "webrtc-apm": ["webrtc-apm"]}


def package_facts(name: str) -> dict:
    facts = {}
    for package in PACKAGES.get(name, []):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            facts[package] = "not installed"
            continue
        size = sum(f.size or 0 for f in dist.files or [])
        licence = dist.metadata.get("License-Expression") or dist.metadata.get("License") or "?"
        facts[package] = {"version": dist.version, "installed_bytes": size, "licence": licence}
    return facts


def available(name: str) -> tuple[bool, str]:
    try:
        CANDIDATES[name]()
    except Exception as error:  # noqa: BLE001 - why a candidate cannot run is the result
        return False, f"{type(error).__name__}: {error}"
    return True, ""


# --- measures -------------------------------------------------------------------------------------


def db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


def best_correlation(output: np.ndarray, clean: np.ndarray, start: int, max_lag: int = 320) -> float:
    """The normalised correlation of ``clean`` with ``output`` from ``start`` on, at the best lag up
    to ``max_lag`` samples (AEC3 delays its output by 8 ms)."""
    best = 0.0
    for lag in range(0, max_lag + 1, 8):
        part = output[start + lag:start + lag + clean.size]
        if part.size < clean.size:
            break
        denominator = np.sqrt(np.sum(part.astype(np.float64) ** 2) * np.sum(clean.astype(np.float64) ** 2))
        best = max(best, float(abs(np.dot(part, clean)) / denominator) if denominator else 0.0)
    return best


def vad_share(samples: np.ndarray) -> float:
    import webrtcvad

    vad = webrtcvad.Vad(2)
    pcm = to_pcm(samples)
    frames = [pcm[i:i + 480] for i in range(0, pcm.size - 480, 480)]
    return sum(vad.is_speech(f.tobytes(), RATE) for f in frames) / max(1, len(frames))


def speech_starts(samples: np.ndarray) -> list[float]:
    """When the endpointer starts utterances in a stream (seconds from its start)."""
    endpointer = Endpointer(VadConfig())
    return [e.t for e in endpointer.push(to_pcm(samples)) if isinstance(e, SpeechStarted)]


def to_pcm(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)


def level(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """Scaled so that its speech (the louder half of its 30 ms frames) is at ``dbfs`` RMS."""
    frames = samples[: samples.size // 480 * 480].reshape(-1, 480)
    power = np.sort(np.mean(frames**2, axis=1))[frames.shape[0] // 2:]
    return (samples * 10 ** (dbfs / 20) / np.sqrt(np.mean(power))).astype(np.float32)


# --- synthetic echo path --------------------------------------------------------------------------


def synthetic(factory, reply: np.ndarray, question: np.ndarray, ser_db: float | None, seed: int) -> dict:
    """One reply with its echo through the room response; the question at ``ser_db`` speech-to-echo
    from 4 s on (None: the echo alone). Output and timings of the canceller."""
    rng = np.random.default_rng(seed)
    delay = int(0.08 * RATE)
    echo = np.convolve(reply, room_response(seed=seed))[: reply.size]
    mic = np.concatenate([np.zeros(delay), echo])[: reply.size]
    onset = 4 * RATE
    near = np.zeros(reply.size)
    if ser_db is not None:
        echo_db = db(mic[onset:onset + question.size])
        near[onset:onset + question.size] = question * 10 ** ((echo_db + ser_db - db(question)) / 20)
    mic = mic + near + rng.standard_normal(reply.size) * 1e-4
    played = PlayedAudio()
    canceller = EchoCanceller(factory(), played, input_latency_s=0.04)
    out, spent = [], 0.0
    t0 = 1000.0
    for start in range(0, reply.size - BLOCK + 1, BLOCK):
        played.add(t0 + start / RATE, reply[start:start + BLOCK].astype(np.float32), RATE, 0.04)
        begun = time.thread_time()
        cleaned, _ = canceller.process(to_pcm(mic[start:start + BLOCK]), t0 + (start + BLOCK) / RATE)
        spent += time.thread_time() - begun
        out.append(cleaned)
    output = np.concatenate(out).astype(np.float32) / 32768
    return {"mic": mic[:output.size], "out": output, "near": near[:output.size], "onset": onset,
            "ms_per_frame": spent * 1000 / (output.size / FRAME)}


def synthetic_report(name: str, trials: int) -> dict:
    factory = CANDIDATES[name]
    erle, erle_all, share, false_starts, minutes, costs = [], [], [], 0, 0.0, []
    detected: dict[str, list[float | None]] = {"0": [], "-5": []}
    kept: dict[str, list[float]] = {"0": [], "-5": []}
    for trial in range(trials):
        reply = level(speak(REPLIES[trial % len(REPLIES)], "en-us", 150), -20)
        text, voice = QUESTIONS[trial % len(QUESTIONS)]
        question = speak(text, voice, 170)
        alone = synthetic(factory, reply, question, None, trial)
        mic, out = alone["mic"], alone["out"]
        erle.append(db(mic[int(CONVERGED_S * RATE):]) - db(out[int(CONVERGED_S * RATE):]))
        erle_all.append(db(mic) - db(out))
        share.append(vad_share(out))
        false_starts += len(speech_starts(out))
        minutes += out.size / RATE / 60
        costs.append(alone["ms_per_frame"])
        for ser in (0, -5):
            talk = synthetic(factory, reply, question, ser, trial)
            onset = talk["onset"]
            kept[str(ser)].append(best_correlation(talk["out"], talk["near"][onset:onset + question.size], onset))
            starts = [t - onset / RATE for t in speech_starts(talk["out"])]
            after = [t for t in starts if t >= -0.05]
            detected[str(ser)].append(after[0] if after else None)
    return {
        "erle_db": round(float(np.mean(erle)), 1), "erle_db_with_convergence": round(float(np.mean(erle_all)), 1),
        "vad_speech_share_on_echo": round(float(np.mean(share)), 3),
        "false_barge_ins_per_min": round(false_starts / minutes, 2),
        "near_end_correlation": {f"{ser}dB": round(float(np.mean(v)), 3) for ser, v in kept.items()},
        **barge_in_summary(detected),
        "ms_per_10ms_frame": round(float(np.median(costs)), 4),
    }


def barge_in_summary(detected: dict[str, list[float | None]]) -> dict:
    found = {f"{ser}dB": round(sum(d is not None for d in v) / len(v), 3) for ser, v in detected.items()}
    fast = {f"{ser}dB": round(sum(d is not None and d <= 0.3 for d in v) / len(v), 3) for ser, v in detected.items()}
    delays = [d for v in detected.values() for d in v if d is not None]
    return {"barge_in_detected": found, "within_300ms": fast,
            "detection_delay_ms_p50": round(float(np.median(delays)) * 1000) if delays else None}


# --- live echo path on PulseAudio -----------------------------------------------------------------


class PairedFrames:
    """An Apm that keeps the microphone and played audio exactly as the canceller paired them."""

    def __init__(self, apm) -> None:
        self.apm = apm
        self.near: list[np.ndarray] = []
        self.far: list[np.ndarray] = []

    @property
    def stream_delay_ms(self) -> int:
        return self.apm.stream_delay_ms

    @stream_delay_ms.setter
    def stream_delay_ms(self, value: int) -> None:
        self.apm.stream_delay_ms = value

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        self.near.append(near.copy())
        self.far.append(far.copy())
        return self.apm.process(near, far)


class Tap:
    """An EchoCanceller that also keeps what went in and out, with the blocks' stamps."""

    def __init__(self, canceller: EchoCanceller) -> None:
        canceller.apm = PairedFrames(canceller.apm)
        self.canceller = canceller
        self.raw: list[np.ndarray] = []
        self.out: list[np.ndarray] = []
        self.first_t: float | None = None
        self.converged_at: float | None = None  # seconds into the stream
        self.spent = 0.0
        self.blocks: list[tuple[np.ndarray, float]] = []  # (cleaned, t_end) as the listener got them
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.canceller, name)

    def __setattr__(self, name: str, value) -> None:
        if name == "input_latency_s":
            self.canceller.input_latency_s = value
        else:
            object.__setattr__(self, name, value)

    def process(self, samples: np.ndarray, t_end: float) -> tuple[np.ndarray, float]:
        begun = time.thread_time()
        cleaned, t_out = self.canceller.process(samples, t_end)
        self.spent += time.thread_time() - begun
        with self._lock:
            if self.first_t is None:
                self.first_t = t_end - samples.size / RATE
            if self.converged_at is None and getattr(self.canceller, "converged", False):
                self.converged_at = t_end - self.first_t
            self.raw.append(samples.copy())
            self.out.append(cleaned.copy())
            self.blocks.append((cleaned.copy(), t_out))
        return cleaned, t_out

    def streams(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            raw = np.concatenate(self.raw).astype(np.float32) / 32768
            out = np.concatenate(self.out).astype(np.float32) / 32768
        return raw, out


def live_run(factory, reply: np.ndarray, question: np.ndarray | None, config: AudioConfig, server) -> dict:
    """The reply played by the Player; the question (if any) played into the microphone 3 s in."""
    from voicechat.audio.listener import Listener
    from voicechat.audio.player import DECODER_RATE, Player
    from voicechat.audio.resample import resample

    events: queue.Queue = queue.Queue()
    with Player(config=config.playback) as speaker:
        played = PlayedAudio()
        speaker.played = played
        tap = Tap(EchoCanceller(factory(), played))
        listener = Listener(config, events.put, speaker, echo=tap)  # type: ignore[arg-type]
        listener.start()
        try:
            speaker.begin()
            speaker.push(resample(reply, RATE, DECODER_RATE))
            speaker.end()
            began = time.monotonic()
            talk = None
            if question is not None:
                while time.monotonic() - began < 3.0 and speaker.playing:
                    speaker.wait(timeout=0.05)
                talk = server.play(question, RATE)
            speaker.wait(timeout=60)
            if talk is not None:
                talk.wait(timeout=30)
            time.sleep(0.5)  # the echo's tail reaches the microphone
        finally:
            listener.stop()
        played_s = speaker.played_s
    seen = []
    while not events.empty():
        seen.append(events.get())
    raw, out = tap.streams()
    paired = tap.canceller.apm
    return {"raw": raw, "out": out, "t0": tap.first_t,
            "near": np.concatenate(paired.near or [np.zeros(0, np.int16)]),
            "far": np.concatenate(paired.far or [np.zeros(0, np.int16)]), "events": seen, "played_s": played_s, "blocks": tap.blocks,
            "converged_after_s": tap.converged_at, "ms_per_frame": tap.spent * 1000 / (raw.size / FRAME)}


def live_report(name: str, trials: int) -> dict:
    factory = CANDIDATES[name]
    server = start_private_server()
    previous = use_server(server)
    path = EchoPath(server, gain_db=ECHO_GAIN_DB)
    try:
        return _live_trials(factory, trials, server, name)
    finally:
        path.stop()
        server.stop()
        restore(previous)


def _live_trials(factory, trials: int, server, name: str) -> dict:
    # without a canceller barge-in is forced on, to show what the echo alone does
    config = AudioConfig(barge_in=True if name == "none" else None)
    erle, share, starts_on_echo, cut, minutes, costs, converged = [], [], 0, 0, 0.0, [], []
    detected: dict[str, list[float | None]] = {"0": [], "-5": []}
    false_interrupts = 0
    for trial in range(trials):
        reply = level(speak(REPLIES[trial % len(REPLIES)], "en-us", 150), REPLY_DBFS)
        alone = live_run(factory, reply, None, config, server)
        raw, out = alone["raw"], alone["out"]
        active = slice(int(CONVERGED_S * RATE), int(reply.size))
        if raw[active].size:  # without a canceller the echo may have cut the reply before
            erle.append(db(raw[active]) - db(out[active]))
        share.append(vad_share(out[: reply.size]))
        starts_on_echo += len(speech_starts(out[: reply.size]))
        cut += sum(isinstance(e, Interrupted) for e in alone["events"])
        minutes += alone["played_s"] / 60
        costs.append(alone["ms_per_frame"])
        converged.append(alone["converged_after_s"])
        echo_db = REPLY_DBFS + ECHO_GAIN_DB  # the echo's speech level at the microphone
        text, voice = QUESTIONS[trial % len(QUESTIONS)]
        for ser in (0, -5):
            question = level(speak(text, voice, 170), echo_db + ser)
            run = live_run(factory, reply, question, config, server)
            onset = run["t0"] + _onset(run["raw"], question)
            cuts = [e for e in run["events"] if isinstance(e, Interrupted)]
            if cuts and cuts[0].t < onset - 0.05:
                false_interrupts += 1  # the echo cut the reply before the question began
                detected[str(ser)].append(None)
            else:
                detected[str(ser)].append(cuts[0].t - onset if cuts else None)
    return {
        "erle_db": round(float(np.mean(erle)), 1) if erle else None,
        "vad_speech_share_on_echo": round(float(np.mean(share)), 3),
        "utterances_started_on_echo_per_min": round(starts_on_echo / (trials * reply.size / RATE / 60), 2),
        "false_barge_ins": cut, "minutes_spoken_alone": round(minutes, 2),
        "false_barge_ins_per_min": round(cut / minutes, 2) if minutes else None,
        "converged_after_s": converged,
        "echo_cut_the_reply_before_the_question": false_interrupts,
        **barge_in_summary(detected),
        "ms_per_10ms_frame": round(float(np.median(costs)), 4),
    }


def _onset(raw: np.ndarray, question: np.ndarray) -> float:
    """Where the question begins in the raw microphone stream (seconds): its best match there
    (the echo, another voice, does not correlate with it), plus its first loud sample."""
    from scipy.signal import correlate

    scores = correlate(raw, question, mode="valid", method="fft")
    loud = np.flatnonzero(np.abs(question) > 0.02 * np.abs(question).max())
    return (int(np.argmax(np.abs(scores))) + int(loud[0])) / RATE


# --- barge-in on the live echo path: the rule that confirms a speech start while the reply plays ----

MORE_REPLIES = [
    "A good night's sleep starts hours before bed: dim the lights, keep the room cool, and put the phone "
    "away, because the blue light tells your brain it is still day.",
    "The Amazon river carries more water than the next seven largest rivers together, and its basin "
    "covers about forty percent of South America.",
    "To boil an egg, lower it into boiling water, wait seven minutes for a soft centre or ten for a firm "
    "one, then cool it in cold water so that it peels easily.",
    "Bicycles were first built in the early eighteen hundreds without pedals; riders pushed along the "
    "ground with their feet, which is why they were called running machines.",
]
REPLY_VOICES = [("en-us", 150), ("en-gb", 160), ("en-us+m3", 140), ("en-us+f4", 170)]
MORE_QUESTIONS = [("Excuse me, can you repeat that?", "en-us+f2"), ("No, I meant the other one.", "en-gb+m4"),
                  ("Sorry, what was the first step?", "en-us+m5")]


class Replayed:
    """What the canceller gave the listener on a live run, given to a listener again: the cleaned
    blocks with their stamps, converged from where the live canceller was, and (``double_talk``)
    the microphone and played audio it paired, heard by a NearEndDetector as in a conversation."""

    def __init__(self, run: dict, converged_at: float | None, double_talk: bool) -> None:
        from voicechat.audio.double_talk import NearEndDetector

        self.converged_at = converged_at  # monotonic time; None: it never converged
        self.now = 0.0
        self.input_latency_s = 0.0
        self.near_end = NearEndDetector()
        self._paired = (run["near"], run["far"]) if double_talk else None
        self._done = 0

    @property
    def converged(self) -> bool:
        aec = self.converged_at is not None and self.now >= self.converged_at
        return aec and (self._paired is None or self.near_end.ready)

    def process(self, samples: np.ndarray, t_end: float) -> tuple[np.ndarray, float]:
        if self._paired is not None:
            near, far = self._paired
            span = slice(self._done, self._done + samples.size)
            self.near_end.push(near[span], far[span])
        self._done += samples.size
        return samples, t_end


class ReplayedSpeaker:
    """The player on that run: playing until the reply's last sample was heard, unless cut."""

    def __init__(self, until: float, clock: Replayed) -> None:
        self.until, self.clock = until, clock
        self.cut_at: float | None = None  # the audio clock's time of the interruption
        self.played_s = 0.0

    @property
    def playing(self) -> bool:
        return self.cut_at is None and self.clock.now < self.until

    def flush(self) -> None:
        self.cut_at = self.clock.now


def replay(run: dict, reply_s: float, rule: tuple[float, int] | None, double_talk: bool = False) -> dict:
    """The run's cleaned audio through voicechat's Listener, the reply playing as it did; the
    barge-in rule: Silero confirming at (threshold, steps), or None (any speech start interrupts),
    and with ``double_talk`` the NearEndDetector deciding where the reply's echo is expected."""
    from voicechat.audio.barge_in import BargeInJudge
    from voicechat.audio.listener import Listener
    from voicechat.audio.turn import SileroVad

    blocks = run["blocks"]
    t0 = run["t0"]
    converged = None if run["converged_after_s"] is None else t0 + run["converged_after_s"]
    clock = Replayed(run, converged, double_talk)
    speaker = ReplayedSpeaker(t0 + reply_s + 0.15, clock)  # the loopback and the devices' latency
    judge = None if rule is None else BargeInJudge(SileroVad.load(), *rule)
    events: list = []
    listener = Listener(AudioConfig(), events.append, speaker, echo=clock, judge=judge)  # type: ignore[arg-type]
    armed = None  # when the listener could first be interrupted by voice
    for cleaned, t_end in blocks:
        if cleaned.size:
            clock.now = t_end
            listener._block(cleaned, t_end)
            if armed is None and clock.converged:
                armed = t_end
    questions = [e for e in events if isinstance(e, UtteranceEnded) and e.start < speaker.until]
    armed_s = max(0.0, speaker.until - armed) if armed is not None else 0.0
    return {"cut_at": speaker.cut_at, "questions_from_playback": questions, "armed_s": armed_s}


def record_barge_in_runs(alone: int, spoken: int) -> dict:
    """Live runs with barge-in off, so that each reply plays whole and the cleaned audio of all of
    it is kept: replies alone, and replies with a question spoken over them at 0 and -5 dB."""
    server = start_private_server()
    previous = use_server(server)
    path = EchoPath(server, gain_db=ECHO_GAIN_DB)
    config = AudioConfig(barge_in=False)
    replies = REPLIES + MORE_REPLIES
    runs: dict = {"alone": [], "0": [], "-5": []}
    try:
        for trial in range(alone):
            voice, speed = REPLY_VOICES[(trial // len(replies) + trial) % len(REPLY_VOICES)]
            reply = level(speak(replies[trial % len(replies)], voice, speed), REPLY_DBFS)
            runs["alone"].append((live_run(webrtc_aec3, reply, None, config, server), reply.size / RATE))
            print(f"barge-in: alone {trial + 1}/{alone}", file=sys.stderr, flush=True)
        questions = QUESTIONS + MORE_QUESTIONS
        for ser in (0, -5):
            for trial in range(spoken):
                voice, speed = REPLY_VOICES[trial % len(REPLY_VOICES)]
                reply = level(speak(replies[trial % len(replies)], voice, speed), REPLY_DBFS)
                text, asker = questions[trial % len(questions)]
                question = level(speak(text, asker, 170), REPLY_DBFS + ECHO_GAIN_DB + ser)
                run = live_run(webrtc_aec3, reply, question, config, server)
                run["onset"] = run["t0"] + _onset(run["raw"], question)
                runs[str(ser)].append((run, reply.size / RATE))
                print(f"barge-in: {ser} dB {trial + 1}/{spoken}", file=sys.stderr, flush=True)
    finally:
        path.stop()
        server.stop()
        restore(previous)
    return runs


def barge_in_figures(runs: dict, rule: tuple[float, int] | None, double_talk: bool = False) -> dict:
    false, queued, minutes = 0, 0, 0.0
    for run, reply_s in runs["alone"]:
        if run["converged_after_s"] is None:
            continue  # half-duplex throughout: nothing to judge
        result = replay(run, reply_s, rule, double_talk)
        false += result["cut_at"] is not None
        queued += len(result["questions_from_playback"])
        minutes += result["armed_s"] / 60
    figures: dict = {"false_barge_ins": false, "false_questions_queued": queued,
                     "minutes_armed": round(minutes, 2), "false_barge_ins_per_min": round(false / minutes, 2)}
    for ser in ("0", "-5"):
        delays, early = [], 0
        for run, reply_s in runs[ser]:
            cut = replay(run, reply_s, rule, double_talk)["cut_at"]
            if cut is not None and cut < run["onset"] - 0.05:
                early += 1  # the echo cut the reply before the question began
                cut = None
            delays.append(None if cut is None else cut - run["onset"])
        found = [d for d in delays if d is not None]
        figures[f"{ser}dB"] = {
            "detected": round(len(found) / len(delays), 3),
            "within_300ms": round(sum(d <= 0.3 for d in found) / len(delays), 3),
            "latency_ms_p50": round(float(np.percentile(found, 50)) * 1000) if found else None,
            "latency_ms_p90": round(float(np.percentile(found, 90)) * 1000) if found else None,
            "cut_before_the_question": early,
        }
    return figures


def barge_in_report(alone: int, spoken: int, kept: Path | None = None) -> dict:
    """``kept``: where the live runs are written, or read from when it exists (the same runs,
    judged again by other rules)."""
    import pickle

    from voicechat.audio.barge_in import STEPS as DEFAULT_STEPS, THRESHOLD

    if kept is not None and kept.exists():
        runs = pickle.loads(kept.read_bytes())  # written by this script
    else:
        runs = record_barge_in_runs(alone, spoken)
        if kept is not None:
            kept.write_bytes(pickle.dumps(runs))
    default = (THRESHOLD, DEFAULT_STEPS)
    minutes = sum(reply_s - (run["converged_after_s"] or reply_s) for run, reply_s in runs["alone"]) / 60
    return {
        "minutes_of_reply_alone_after_convergence": round(minutes, 2),
        "never_converged": sum(run["converged_after_s"] is None for group in runs.values() for run, _ in group),
        "questions_per_level": len(runs["0"]),
        "before (any speech start interrupts)": barge_in_figures(runs, None),
        f"Silero confirms ({DEFAULT_STEPS} steps at {THRESHOLD})": barge_in_figures(runs, default),
        "after (Silero confirms, the double-talk detector decides over the echo: the default)":
            barge_in_figures(runs, default, double_talk=True),
        "double_talk_ms_per_10ms_frame": double_talk_cost(runs),
    }


def double_talk_cost(runs: dict) -> float:
    """CPU time of the NearEndDetector per 10 ms of audio, over the replies played alone."""
    from voicechat.audio.double_talk import NearEndDetector

    spent, frames = 0.0, 0
    for run, _ in runs["alone"]:
        detector = NearEndDetector()
        begun = time.thread_time()
        for start in range(0, run["near"].size, BLOCK):
            detector.push(run["near"][start:start + BLOCK], run["far"][start:start + BLOCK])
        spent += time.thread_time() - begun
        frames += run["near"].size // FRAME
    return round(spent * 1000 / frames, 4)


# --- main -----------------------------------------------------------------------------------------


def choice_key(entry: dict) -> tuple:
    """What matters to the user first: the assistant never cutting itself off, then being cut off
    promptly, then the question reaching the models intact, then the cost."""
    runs = [entry[k] for k in ("synthetic", "live") if k in entry]
    false = sum(r["false_barge_ins_per_min"] or 0 for r in runs)
    prompt = sum(sum(r["within_300ms"].values()) for r in runs)
    kept = sum(entry["synthetic"]["near_end_correlation"].values())
    return (round(false, 1), -prompt, -round(kept, 2), entry["synthetic"]["ms_per_10ms_frame"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="also measure on PulseAudio virtual devices")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(CANDIDATES), help="measure only these")
    parser.add_argument("--barge-in", nargs=2, type=int, metavar=("ALONE", "SPOKEN"),
                        help="only the barge-in rule on the live echo path with AEC3: ALONE replies "
                             "played alone, SPOKEN questions spoken over a reply at each of 0 and -5 dB")
    parser.add_argument("--runs", type=Path, help="with --barge-in: keep the live runs in this file, or "
                                                      "judge the ones already there again")
    args = parser.parse_args()
    if args.barge_in:
        print(json.dumps({"barge_in": barge_in_report(*args.barge_in, kept=args.runs)}, indent=2))
        return
    report: dict = {"block_ms": BLOCK * 1000 // RATE, "trials": args.trials, "candidates": {}}
    for name in args.only or CANDIDATES:
        ok, why = available(name)
        entry: dict = {"packages": package_facts(name)}
        if not ok:
            entry["unavailable"] = why
            report["candidates"][name] = entry
            continue
        entry["synthetic"] = synthetic_report(name, args.trials)
        if args.live:
            entry["live"] = live_report(name, args.trials)
        report["candidates"][name] = entry
        print(f"{name}: done", file=sys.stderr, flush=True)
    measured = {n: e for n, e in report["candidates"].items() if n != "none" and "synthetic" in e}
    if measured:
        report["chosen"] = min(measured, key=lambda n: choice_key(measured[n]))
        report["chosen_by"] = ("fewest false barge-ins, then most questions interrupting within 300 ms, "
                               "then the user's speech best kept over the echo, then least CPU")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
