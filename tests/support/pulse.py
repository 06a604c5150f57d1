"""Real audio devices without hardware: a private PulseAudio server in a temporary HOME and
XDG_RUNTIME_DIR, with two null sinks (``vc_speaker``, the default output, and ``vc_mic``) and a
virtual microphone ``vc_mic_in`` (a remap of ``vc_mic``'s monitor, the default input). PortAudio
reaches it through ALSA's pulse plugin.

The ``pulse`` fixture (registered in tests/conftest.py) gives a test module such a server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

SPEAKER = "vc_speaker"
MIC_SINK = "vc_mic"
MIC = "vc_mic_in"
SPEAKER_RATE = 48000
MIC_RATE = 16000


class PulseServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "native"
        home, runtime = root / "home", root / "run"
        home.mkdir()
        runtime.mkdir(mode=0o700)
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_SERVER": f"unix:{self.socket}",
        }

    def start(self) -> None:
        # -n: no default script, so nothing probes hardware; -D returns once the server is ready
        subprocess.run(
            ["pulseaudio", "-n", "-D", "--exit-idle-time=-1", "--disallow-exit", "--log-target=stderr",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1"],
            env=self.env, check=True, capture_output=True, timeout=30,
        )
        self.pactl("load-module", "module-null-sink", f"sink_name={SPEAKER}", f"rate={SPEAKER_RATE}",
                   "channels=1", "norewinds=1")
        self.pactl("load-module", "module-null-sink", f"sink_name={MIC_SINK}", f"rate={MIC_RATE}",
                   "channels=1", "norewinds=1")
        self.pactl("load-module", "module-remap-source", f"master={MIC_SINK}.monitor",
                   f"source_name={MIC}", "channels=1")
        self.pactl("set-default-sink", SPEAKER)
        self.pactl("set-default-source", MIC)

    def stop(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=30)

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def play(self, samples: np.ndarray, rate: int, sink: str = MIC_SINK) -> subprocess.Popen:
        """Start playing float samples into a sink (the virtual microphone by default)."""
        pcm = np.clip(np.asarray(samples) * 32768, -32768, 32767).astype("<i2").tobytes()
        process = subprocess.Popen(
            ["pacat", "--playback", f"--device={sink}", "--format=s16le", f"--rate={rate}",
             "--channels=1", "--latency-msec=200"],
            env=self.env, stdin=subprocess.PIPE,
        )
        process.stdin.write(pcm)
        process.stdin.close()
        return process

    def record(self, source: str = f"{SPEAKER}.monitor", rate: int = SPEAKER_RATE) -> Recording:
        process = subprocess.Popen(
            ["parec", f"--device={source}", "--format=s16le", f"--rate={rate}", "--channels=1",
             "--latency-msec=50"],
            env=self.env, stdout=subprocess.PIPE,
        )
        return Recording(process)


class Recording:
    """A running parec, read continuously (a full pipe would stall it)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self._data = bytearray()
        self._grown = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.process.stdout.read1(65536):
            with self._grown:
                self._data.extend(chunk)
                self._grown.notify_all()

    def samples(self) -> np.ndarray:
        with self._grown:
            data = bytes(self._data)
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768

    def wait_for_bytes(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until the recorder delivers data (it is connected and running)."""
        with self._grown:
            return self._grown.wait_for(lambda: len(self._data) >= count, timeout)

    def wait_for_sound(self, seconds: float, rate: int, timeout: float = 30.0) -> bool:
        """Wait until ``seconds`` have been recorded after the first audible sample."""

        def enough() -> bool:
            recorded = self.samples()
            loud = np.flatnonzero(np.abs(recorded) > 1e-3)
            return bool(loud.size) and recorded.size - loud[0] >= seconds * rate

        with self._grown:
            return self._grown.wait_for(enough, timeout)

    def stop(self) -> np.ndarray:
        """Everything recorded, float32."""
        self.process.terminate()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        return self.samples()


class EchoPath:
    """The virtual speaker heard by the virtual microphone, as from a loudspeaker across a desk:
    PulseAudio's loopback plays what ``vc_speaker`` plays into ``vc_mic`` (where it mixes with
    whatever else is played there), ``latency_ms`` late and ``gain_db`` quieter. (A room's
    reverberation is added in memory by the tests that need it: a relay through parec and pacat
    drops and repeats blocks under load, and an echo path that jumps is no room.)"""

    def __init__(self, server: PulseServer, gain_db: float = -6.0, latency_ms: int = 60) -> None:
        self.server = server
        self.module = server.pactl("load-module", "module-loopback", f"source={SPEAKER}.monitor",
                                   f"sink={MIC_SINK}", f"latency_msec={latency_ms}",
                                   "source_dont_move=true", "sink_dont_move=true").strip()
        for line in server.pactl("list", "short", "sink-inputs").splitlines():
            index, owner = line.split("\t")[:2]
            if owner == self.module:
                server.pactl("set-sink-input-volume", index, f"{gain_db}dB")

    def stop(self) -> None:
        self.server.pactl("unload-module", self.module)


def room_response(gain: float = 0.5, rt60_s: float = 0.25, reverb: float = 0.5, seed: int = 0) -> np.ndarray:
    """A room impulse response at 16 kHz: a direct path of ``gain`` after 1 ms, then exponentially
    decaying diffuse reflections (reverberation time ``rt60_s``) carrying ``reverb`` times the
    direct path's energy."""
    rng = np.random.default_rng(seed)
    length = int(rt60_s * MIC_RATE)
    response = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)  # -60 dB over rt60
    response[: MIC_RATE // 1000 + 1] = 0.0
    response *= np.sqrt(reverb / np.sum(response**2))
    response[MIC_RATE // 1000] = 1.0
    return (gain * response).astype(np.float64)


def start_private_server() -> PulseServer:
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("PulseAudio (pulseaudio, pulseaudio-utils) is not installed")
    server = PulseServer(Path(tempfile.mkdtemp(prefix="voicechat-pulse-")))
    server.start()
    return server


def use_server(server: PulseServer | None) -> dict[str, str | None]:
    """Point this process (and PortAudio, rescanned) at ``server``; returns the previous values."""
    from voicechat.audio import devices

    keys = ("PULSE_SERVER", "XDG_RUNTIME_DIR")
    previous = {key: os.environ.get(key) for key in keys}
    for key in keys:
        if server is not None:
            os.environ[key] = server.env[key]
    devices.refresh()
    return previous


def restore(previous: dict[str, str | None]) -> None:
    from voicechat.audio import devices

    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    devices.refresh()


@pytest.fixture(scope="module")
def pulse():
    """A running private PulseAudio server that this process's PortAudio uses."""
    server = start_private_server()
    previous = use_server(server)
    try:
        yield server
    finally:
        server.stop()
        restore(previous)
        shutil.rmtree(server.root, ignore_errors=True)
