"""Streaming playback: the decoder pushes audio as it is made; a sounddevice OutputStream callback
pulls it from a jitter buffer.

Playback of a reply starts once ``lead_ms`` is buffered (or the reply is complete). When the
buffer runs dry before the reply is complete, the audio fades out, the gap is counted as an
underrun, and playback resumes with a fade-in once a longer lead is buffered (it grows by
``lead_ms`` per underrun, up to four times), so gaps never click and do not repeat. :meth:`Player.flush` cuts the reply: only a fade of ``fade_ms`` is still played.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from voicechat.audio import devices
from voicechat.audio.devices import DeviceInfo
from voicechat.audio.echo import PlayedAudio
from voicechat.audio.resample import StreamResampler
from voicechat.config import PlaybackConfig
from voicechat.errors import AudioError

DECODER_RATE = 22050


class JitterBuffer:
    """Audio of one reply waiting for the device. :meth:`read` is called from the audio
    callback and never blocks for longer than a copy."""

    def __init__(self, lead: int, fade: int) -> None:
        self.base_lead = lead  # samples buffered before playback starts
        self.lead = lead  # grows by base_lead at each underrun of a reply, up to 4 times
        self.fade = fade  # samples of the ramps at gaps and on flush
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._state = "idle"  # idle: no reply; filling: waiting for the lead; playing
        self._ended = False  # the reply's last audio has been pushed
        self._fade_in = False
        self.finished = threading.Event()  # set while no reply is in progress
        self.finished.set()
        self._new_reply()

    def _new_reply(self) -> None:
        self.underruns = 0  # gaps in this reply (the buffer ran dry before its end)
        self.played = 0  # samples of this reply handed to the device
        self.pushed = 0
        self.first_audio_at: float | None = None  # when its first sample reaches the device
        self.lead = self.base_lead
        self._ended = False

    @property
    def active(self) -> bool:
        """A reply is in progress (buffered, playing or waiting for more audio)."""
        return self._state != "idle"

    @property
    def buffered(self) -> int:
        return self._buffered

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32)
        with self._lock:
            if self._state == "idle" or self._ended:
                self._new_reply()
                if self._state == "idle":
                    self._state = "filling"
                self.finished.clear()
            if samples.size:
                self._chunks.append(samples)
                self._buffered += samples.size
                self.pushed += samples.size

    def end(self) -> None:
        """No more audio comes for this reply: play what is buffered, then go idle."""
        with self._lock:
            self._ended = True
            if self._state != "idle" and self._buffered == 0:
                self._go_idle()

    def flush(self) -> None:
        """Cut the reply now: keep only a short fade-out of what comes next."""
        with self._lock:
            if self._state != "playing":
                self._chunks.clear()
                self._buffered = 0
                if self._state != "idle":
                    self._go_idle()
                return
            tail = self._take(min(self.fade, self._buffered))
            if tail.size:
                tail *= np.linspace(1.0, 0.0, tail.size, dtype=np.float32)
            self._chunks.clear()
            self._chunks.append(tail)
            self._buffered = tail.size
            self._ended = True
            if not tail.size:
                self._go_idle()

    def read(self, count: int, now: float = 0.0) -> np.ndarray:
        """The next ``count`` samples for the device; ``now`` is when they will be heard."""
        out = np.zeros(count, dtype=np.float32)
        with self._lock:
            if self._state == "filling":
                if self._buffered >= self.lead or (self._ended and self._buffered):
                    self._state = "playing"
                    self._fade_in = True
            if self._state != "playing":
                return out
            taken = self._take(min(count, self._buffered))
            out[: taken.size] = taken
            if self._fade_in:
                ramp = min(self.fade, taken.size)
                out[:ramp] *= np.linspace(0.0, 1.0, ramp, dtype=np.float32)
                self._fade_in = False
            if taken.size and self.first_audio_at is None:
                self.first_audio_at = now
            self.played += taken.size
            if self._buffered == 0:
                if self._ended:
                    self._go_idle()
                else:  # ran dry mid-reply: fade out, wait for the lead again
                    ramp = min(self.fade, taken.size)
                    out[taken.size - ramp: taken.size] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)
                    self.underruns += 1
                    self.lead = min(self.lead + self.base_lead, 4 * self.base_lead)
                    self._state = "filling"
        return out

    def _take(self, count: int) -> np.ndarray:
        parts, needed = [], count
        while needed:
            chunk = self._chunks[0]
            if chunk.size <= needed:
                parts.append(self._chunks.popleft())
                needed -= chunk.size
            else:
                parts.append(chunk[:needed])
                self._chunks[0] = chunk[needed:]
                needed = 0
        self._buffered -= count
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _go_idle(self) -> None:
        self._state = "idle"
        self.finished.set()


class Player:
    """``with Player(device) as speaker: speaker.begin(); speaker.push(audio_22k); speaker.end()``.

    ``rate`` forces the device rate (default: the source rate if the device takes it, else its
    own rate, with resampling)."""

    def __init__(
        self,
        device: str | int | None = None,
        config: PlaybackConfig = PlaybackConfig(),
        source_rate: int = DECODER_RATE,
        rate: int | None = None,
    ) -> None:
        self.spec = device
        self.config = config
        self.source_rate = source_rate
        self.requested_rate = rate
        self.device: DeviceInfo | None = None
        self.rate = 0
        self.device_underflows = 0  # reported by PortAudio (the callback came too late)
        self._stream: Any = None
        self._buffer = JitterBuffer(0, 0)
        self._resampler: StreamResampler | None = None
        self._accepting = False
        self.played: PlayedAudio | None = None  # set by an echo canceller: every block sent is told there

    def open(self) -> Player:
        sd = devices.sounddevice()
        self.device = devices.find_device(self.spec, "output")
        self.rate, channels = devices.choose_settings(self.device, "output", self.source_rate)
        self.rate = self.requested_rate or self.rate
        self._resampler = StreamResampler(self.source_rate, self.rate)
        self._buffer = JitterBuffer(
            lead=self.rate * self.config.lead_ms // 1000, fade=int(self.rate * self.config.fade_ms / 1000)
        )
        try:
            self._stream = sd.OutputStream(
                device=self.device.index,
                samplerate=self.rate,
                channels=channels,
                dtype="float32",
                blocksize=self.rate * self.config.block_ms // 1000,
                latency="low",
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            self._stream = None
            raise devices.open_error(error, self.device, "output") from None
        return self

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            self.device_underflows += 1
        now = time.monotonic()
        if not self._buffer.active:  # between replies: silence at the least cost per block
            outdata.fill(0)
            if self.played is not None:
                self.played.add(now, np.zeros(frames, np.float32), self.rate, self.latency_s)
            return
        delay = max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
        block = self._buffer.read(frames, now + delay)
        outdata[:] = block[:, None]  # same on every channel
        if self.played is not None:
            self.played.add(now, block, self.rate, delay or self.latency_s)

    # --- what the engine calls --------------------------------------------------------------------

    def begin(self) -> None:
        """Start a reply: from now until end() or flush(), pushed audio is played."""
        self._check_alive()
        self._resampler.reset()
        self._accepting = True

    def push(self, audio: np.ndarray) -> bool:
        """Queue decoder audio (float32 at ``source_rate``). Audio pushed outside a reply (after
        flush() cut it, before begin()) is dropped: returns False."""
        if not self._accepting:
            return False
        self._check_alive()
        self._buffer.push(self._resampler.process(audio))
        return True

    def _check_alive(self) -> None:
        if self._stream is None or not self._stream.active:
            self._accepting = False
            self._buffer.flush()
            name = self.device.name if self.device else "?"
            raise AudioError(
                f"the output device {name!r} stopped playing (unplugged, or the sound server "
                "stopped); reconnect it or choose another device with audio.output_device"
            )

    def end(self) -> None:
        """The reply is complete: play out what is buffered."""
        if self._accepting:
            self._buffer.push(self._resampler.flush())
            self._buffer.end()
        self._accepting = False

    def flush(self) -> None:
        """Cut the reply: silent within one block (after a fade of ``fade_ms``); audio still
        pushed for it is dropped."""
        self._accepting = False
        self._buffer.flush()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the reply has been played (or flushed); False on timeout."""
        return self._buffer.finished.wait(timeout)

    @property
    def playing(self) -> bool:
        """A reply is in progress: buffered, playing, or waiting for more audio."""
        return self._buffer.active

    @property
    def played_s(self) -> float:
        """Seconds of the current (or last) reply handed to the device; what the user heard,
        give or take the device latency."""
        return self._buffer.played / self.rate if self.rate else 0.0

    @property
    def underruns(self) -> int:
        return self._buffer.underruns

    @property
    def first_audio_at(self) -> float | None:
        """Monotonic time when the reply's first sample reaches the device's output."""
        return self._buffer.first_audio_at

    @property
    def latency_s(self) -> float:
        return float(self._stream.latency) if self._stream is not None else 0.0

    def close(self) -> None:
        stream, self._stream = self._stream, None
        self.flush()
        if stream is not None:
            devices.close_stream(stream)

    def __enter__(self) -> Player:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
