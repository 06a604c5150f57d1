"""Reading and writing audio files, with errors a user can act on."""

from __future__ import annotations

import os
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


# The file name's extension decides the format of an audio output: (soundfile format, subtype).
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def check_output(path: Path, *inputs: Path | None) -> None:
    """Fails before any work when ``path`` cannot be written (a folder, no such folder, no right
    to write there, an extension without a format) or would replace an input file."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give a file name for the output")
    if not path.parent.is_dir():
        raise AudioError(f"{path}: the folder {path.parent} does not exist")
    output_format(path)
    for source in inputs:
        if source is not None and path.exists() and path.resolve() == Path(source).resolve():
            raise AudioError(f"{path}: is also the input; choose another output file")
    _check_writable(path)


def _check_writable(path: Path) -> None:
    """Creates and removes a file beside ``path``: the one sure test that it can be written."""
    import tempfile

    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as error:
        raise AudioError(f"{path}: cannot write in {path.parent} ({error.strerror or error}); "
                         "choose another folder") from None
    os.close(handle)
    os.unlink(probe)


def output_format(path: Path) -> tuple[str, str]:
    """(format, subtype) of an audio output, from its file name's extension."""
    try:
        return OUTPUT_FORMATS[Path(path).suffix.lower()]
    except KeyError:
        what = f"{Path(path).suffix} files" if Path(path).suffix else "a file without an extension"
        names = ", ".join(list(OUTPUT_FORMATS)[:-1]) + " or " + list(OUTPUT_FORMATS)[-1]
        raise AudioError(f"{path}: cannot write {what}; end the name with {names}") from None


def write_audio(path: Path, samples: np.ndarray, rate: int) -> None:
    """In the format of the file name's extension (OUTPUT_FORMATS); see write_wav."""
    _write(Path(path), samples, rate, *output_format(path))


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV, written to a temporary name first so a crash never leaves half a file."""
    _write(Path(path), samples, rate, "WAV", "PCM_16")


def _write(path: Path, samples: np.ndarray, rate: int, format: str, subtype: str) -> None:  # noqa: A002
    import soundfile

    tmp = path.with_name(path.name + ".part")
    try:
        soundfile.write(str(tmp), np.asarray(samples), rate, subtype=subtype, format=format)
        tmp.replace(path)
    except (OSError, soundfile.LibsndfileError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise AudioError(f"{path}: cannot write audio file ({reason})") from None
