"""Where a question's speech comes from: a speech set laid out as
``ROOT/<dataset>/<voice>/<id>/question.wav``, a JSONL manifest ({"id", "audio", optional "text"}),
or espeak-ng synthesis (marked synthetic in every report)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicechat.errors import VoicechatError
from voicechat.evaluation.datasets import safe_name

ESPEAK_VOICES = {"en": "en-us", "zh": "cmn"}


@dataclass(frozen=True)
class SpeechSource:
    """Question id -> audio file, and how the audio was made."""

    kind: str  # "speech-set", "manifest" or "synthetic"
    description: str
    files: dict[str, Path]
    texts: dict[str, str]

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def path(self, question_id: str) -> Path:
        """The question's audio file, which must exist."""
        try:
            file = self.files.get(question_id) or self.files[safe_name(question_id)]
        except KeyError:
            raise VoicechatError(f"no recording of question {question_id} in {self.description}; "
                                 "record it or use --limit/--synth") from None
        if not file.is_file():
            raise VoicechatError(f"question {question_id}: no audio file {file} (named in {self.description}); "
                                 "record it or correct the path")
        return file

    def load(self, question_id: str) -> np.ndarray:
        """16 kHz mono float32."""
        from voicechat.audio.files import read_audio
        from voicechat.audio.resample import to_model_input

        samples, rate = read_audio(self.path(question_id))
        return to_model_input(samples, rate)


def speech_set(root: Path, dataset: str, voice: str | None = None) -> SpeechSource:
    """The study's layout: ROOT/<dataset>/<voice>/<id>/question.wav (one voice chosen)."""
    base = root / dataset
    if not base.is_dir():
        raise VoicechatError(f"{base}: no such folder; expected the layout ROOT/{dataset}/<voice>/<id>/question.wav")
    voices = sorted(p.name for p in base.iterdir() if p.is_dir())
    if voice is None:
        if len(voices) != 1:
            raise VoicechatError(f"{base}: choose one voice with --speech-voice (found: {', '.join(voices) or 'none'})")
        voice = voices[0]
    folder = base / voice
    if not folder.is_dir():
        raise VoicechatError(f"{folder}: no such voice folder (found: {', '.join(voices) or 'none'})")
    files = {p.parent.name: p for p in sorted(folder.glob("*/question.wav"))}
    if not files:
        raise VoicechatError(f"{folder}: no <id>/question.wav recordings in this voice folder")
    return SpeechSource("speech-set", f"{folder}", files, {})


def manifest(path: Path) -> SpeechSource:
    """JSON lines {"id": ..., "audio": path relative to the manifest, "text": optional}."""
    if not path.is_file():
        raise VoicechatError(f"{path}: no such speech manifest")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise VoicechatError(f"{path}: cannot be read as UTF-8 text ({error}); "
                             "check that it is the speech manifest") from None
    files, texts = {}, {}
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            qid, audio = str(record["id"]), Path(str(record["audio"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise VoicechatError(f"{path}: line {number + 1} is not a manifest entry with id and audio ({error})") from None
        files[qid] = audio if audio.is_absolute() else path.parent / audio
        if record.get("text"):
            texts[qid] = str(record["text"])
    return SpeechSource("manifest", str(path), files, texts)


def synthesise(questions, out_dir: Path, speed: int = 160) -> SpeechSource:
    """Speaks each question with espeak-ng into out_dir/<id>/question.wav (kept for reruns)."""
    if shutil.which("espeak-ng") is None:
        raise VoicechatError("--synth needs espeak-ng; install it (e.g. apt install espeak-ng)")
    files = {}
    for question in questions:
        target = out_dir / safe_name(question.id) / "question.wav"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            voice = ESPEAK_VOICES.get(question.lang, "en-us")
            partial = target.with_suffix(".partial.wav")
            result = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(partial), question.text],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise VoicechatError(f"espeak-ng failed on question {question.id}: {result.stderr.strip()}")
            partial.replace(target)
        files[question.id] = target
    return SpeechSource("synthetic", f"espeak-ng synthesis in {out_dir}", files, {})
