"""Microphone capture: a sounddevice InputStream whose callback only copies blocks into a queue;
:meth:`Capture.read` turns them into 16 kHz mono int16 in the caller's thread."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicechat.audio import devices
from voicechat.audio.devices import DeviceInfo
from voicechat.audio.resample import MODEL_RATE, StreamResampler
from voicechat.errors import AudioError


@dataclass(frozen=True)
class Block:
    samples: np.ndarray  # int16, 16 kHz mono
    t_end: float  # monotonic time when the block's last sample arrived from the device


class Capture:
    """``with Capture(device) as mic: block = mic.read()``. ``device`` is an index, a part of a
    device name, or None for the system default."""

    def __init__(self, device: str | int | None = None, block_ms: int = 40, stall_s: float = 2.0) -> None:
        self.spec = device
        self.block_ms = block_ms
        self.stall_s = stall_s  # no audio for this long means the device is gone
        self.device: DeviceInfo | None = None
        self.rate = 0  # the device's rate
        self.overflows = 0
        self._stream: Any = None
        self._queue: queue.SimpleQueue[tuple[float, np.ndarray]] = queue.SimpleQueue()
        self._resampler: StreamResampler | None = None

    def open(self) -> Capture:
        sd = devices.sounddevice()
        self.device = devices.find_device(self.spec, "input")
        self.rate, channels = devices.choose_settings(self.device, "input", MODEL_RATE)
        self._resampler = StreamResampler(self.rate, MODEL_RATE)
        self._queue = queue.SimpleQueue()
        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.rate,
                channels=channels,
                dtype="float32",
                blocksize=self.rate * self.block_ms // 1000,
                latency="low",
                callback=self._callback,
            )
            self._stream.start()
            self._last_arrival = time.monotonic()
        except (sd.PortAudioError, ValueError) as error:
            self._stream = None
            raise devices.open_error(error, self.device, "input") from None
        return self

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put((time.monotonic(), indata.copy()))

    def read(self, timeout: float = 0.5) -> Block | None:
        """The next block, or None when none arrived within ``timeout`` seconds. Raises AudioError
        when the device has stopped delivering audio for ``stall_s``."""
        if self._stream is None:
            raise AudioError("the microphone is not open")
        try:
            t_end, raw = self._queue.get(timeout=timeout)
        except queue.Empty:
            if not self._stream.active or time.monotonic() - self._last_arrival > self.stall_s:
                raise self._gone() from None
            return None
        self._last_arrival = time.monotonic()
        mono = raw.mean(axis=1) if raw.ndim == 2 else raw
        resampled = self._resampler.process(mono)
        return Block(np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16), t_end)

    def _gone(self) -> AudioError:
        name = self.device.name if self.device else "?"
        return AudioError(
            f"the input device {name!r} stopped delivering audio (unplugged, or the sound server "
            "stopped); reconnect it or choose another device with audio.input_device"
        )

    @property
    def latency_s(self) -> float:
        """The input latency the device reports."""
        return float(self._stream.latency) if self._stream is not None else 0.0

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            devices.close_stream(stream)

    def __enter__(self) -> Capture:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

