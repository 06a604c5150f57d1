"""Audio devices: listing, choosing by index or name, picking a sample rate, and turning
PortAudio's failures into messages a user can act on."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from voicechat.errors import AudioError

Kind = Literal["input", "output"]
COMMON_RATES = (48000, 44100, 32000, 24000, 22050, 16000, 8000)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels


def sounddevice() -> Any:
    """The sounddevice module, or an AudioError when the PortAudio library is missing."""
    try:
        import sounddevice as sd
    except OSError:
        raise AudioError(
            "the PortAudio library is not installed; install it (Debian/Ubuntu: apt install "
            "libportaudio2) to use a microphone or speaker"
        ) from None
    return sd


def refresh() -> None:
    """Scan the devices again (PortAudio only sees devices present when it started). Call only
    while no stream is open."""
    sd = sounddevice()
    sd._terminate()
    sd._initialize()


def list_devices() -> list[DeviceInfo]:
    sd = sounddevice()
    try:
        raw = sd.query_devices()
        apis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as error:
        raise AudioError(f"cannot list audio devices ({error})") from None
    devices = []
    for info in raw:
        devices.append(
            DeviceInfo(
                index=int(info["index"]),
                name=str(info["name"]),
                host_api=str(apis[info["hostapi"]]["name"]),
                max_input_channels=int(info["max_input_channels"]),
                max_output_channels=int(info["max_output_channels"]),
                default_rate=int(info["default_samplerate"]),
                is_default_input=info["index"] == _default_index(sd, "input", default_in),
                is_default_output=info["index"] == _default_index(sd, "output", default_out),
            )
        )
    return devices


def _default_index(sd: Any, kind: Kind, configured: int) -> int:
    if configured is not None and configured >= 0:
        return int(configured)
    try:
        return int(sd.query_devices(kind=kind)["index"])
    except sd.PortAudioError:
        return -1


def find_device(spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The device named by ``spec``: None for the system default, an index, or a part of the name
    (case-insensitive; an exact name wins over partial matches)."""
    devices = [d for d in list_devices() if d.channels(kind) > 0]
    if not devices:
        raise AudioError(
            f"no audio {kind} device found; connect one, or start a sound server "
            "(PulseAudio or PipeWire), then try again"
        )
    if spec is None or spec == "":
        default = [d for d in devices if (d.is_default_input if kind == "input" else d.is_default_output)]
        return default[0] if default else devices[0]
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        for device in devices:
            if device.index == index:
                return device
        raise AudioError(f"there is no {kind} device with index {index}; run `voicechat devices` to list them")
    wanted = str(spec).strip().lower()
    exact = [d for d in devices if d.name.lower() == wanted]
    matches = exact or [d for d in devices if wanted in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioError(f"no {kind} device matches {spec!r}; run `voicechat devices` to list them")
    names = ", ".join(f"{d.index}: {d.name}" for d in matches)
    raise AudioError(f"{spec!r} matches several {kind} devices ({names}); give the index instead")


def choose_settings(device: DeviceInfo, kind: Kind, preferred_rate: int) -> tuple[int, int]:
    """(rate, channels) the device accepts: mono if it can, else stereo; ``preferred_rate`` if it
    can, else its default rate, else a common rate."""
    sd = sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = dict.fromkeys([preferred_rate, device.default_rate, *COMMON_RATES])
    for channels in dict.fromkeys([1, max(1, min(2, device.channels(kind)))]):
        for rate in rates:
            try:
                check(device=device.index, channels=channels, dtype="float32", samplerate=rate)
                return rate, channels
            except (sd.PortAudioError, ValueError):
                continue
    raise AudioError(
        f"the {kind} device {device.name!r} accepts none of the usual sample rates; "
        f"choose another device with audio.{kind}_device"
    )


def open_error(error: Exception, device: DeviceInfo, kind: Kind) -> AudioError:
    """A PortAudio failure to open or run a stream, as a message for the user."""
    text = str(error)
    lowered = text.lower()
    setting = f"audio.{kind}_device"
    if "unavailable" in lowered or "busy" in lowered:
        return AudioError(
            f"the {kind} device {device.name!r} is busy or unavailable; close the program using it "
            f"or choose another device with {setting} ({text})"
        )
    if "sample rate" in lowered:
        return AudioError(
            f"the {kind} device {device.name!r} does not support the requested sample rate; "
            f"choose another device with {setting} ({text})"
        )
    return AudioError(f"cannot use the {kind} device {device.name!r} ({text}); choose another with {setting}")


def close_stream(stream: Any) -> None:
    """Close a stream without hanging: closing one whose device or sound server has gone can block
    inside PortAudio, so it is done aside and waited for only a moment."""

    def close() -> None:
        try:
            stream.abort()
            stream.close()
        except Exception:  # a device that is already gone cannot be closed cleanly
            pass

    closer = threading.Thread(target=close, name="voicechat-close-stream", daemon=True)
    closer.start()
    closer.join(timeout=1.0)
