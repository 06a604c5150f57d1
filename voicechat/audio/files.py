"""Reading and writing audio files, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicechat.errors import AudioError


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Returns float32 samples shaped (frames, channels) and the sample rate."""
    import soundfile

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    return samples, int(rate)


def read_speech(path: Path) -> np.ndarray:
    """A recorded question as 16 kHz mono float32; an empty or damaged recording is refused."""
    from voicechat.audio.resample import to_model_input

    samples, rate = read_audio(path)
    if samples.size == 0:
        raise AudioError(f"{path}: the recording is empty")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: the recording holds invalid samples (NaN or infinity)")
    return to_model_input(samples, rate)


def check_output(path: Path, *inputs: Path | None) -> None:
    """Fails before any work when ``path`` cannot be written or would replace an input file."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give a file name for the output")
    if not path.parent.is_dir():
        raise AudioError(f"{path}: the folder {path.parent} does not exist")
    for source in inputs:
        if source is not None and path.exists() and path.resolve() == Path(source).resolve():
            raise AudioError(f"{path}: is also the input; choose another output file")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV, written to a temporary name first so a crash never leaves half a file."""
    import soundfile

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        soundfile.write(str(tmp), np.asarray(samples), rate, subtype="PCM_16", format="WAV")
        tmp.replace(path)
    except (OSError, soundfile.LibsndfileError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise AudioError(f"{path}: cannot write audio file ({reason})") from None
