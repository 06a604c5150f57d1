"""Reading and writing audio files, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicechat.errors import AudioError


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Returns float32 samples shaped (frames, channels) and the sample rate."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    return samples, int(rate)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV, written to a temporary name first so a crash never leaves half a file."""
    import soundfile

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        soundfile.write(str(tmp), np.asarray(samples), rate, subtype="PCM_16", format="WAV")
        tmp.replace(path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise AudioError(f"{path}: cannot write audio file ({error.strerror or error})") from None
