"""The session log: one folder per conversation, one JSON line per turn, the audio beside it.

Each turn is appended and flushed to disk as soon as it ends, so a crash loses nothing said
before it. Audio files are written under a temporary name and renamed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicechat.audio.files import write_wav
from voicechat.errors import VoicechatError
from voicechat.events import Source, TurnTimings

if TYPE_CHECKING:
    from voicechat.config import Config


@dataclass(frozen=True)
class TurnRecord:
    turn: int
    time: str
    mode: str
    two_round: str
    voice: str
    question: str | None
    reply_text: str
    interrupted: bool
    sources: list[Source]
    timings: TurnTimings
    user_audio: str | None = None
    reply_audio: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_sessions_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("voicechat")) / "sessions"


def open_session_log(config: Config) -> SessionLog:
    """A new session folder under ``sessions.dir`` (default: the user data folder)."""
    root = config.resolve_path(config.sessions.dir) if config.sessions.dir else default_sessions_dir()
    return SessionLog(root)


class SessionLog:
    def __init__(self, root: Path) -> None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.folder = root / stamp
        suffix = 1
        while self.folder.exists():
            suffix += 1
            self.folder = root / f"{stamp}-{suffix}"
        try:
            self.folder.mkdir(parents=True)
        except OSError as error:
            raise VoicechatError(f"cannot create the sessions folder {self.folder} ({error.strerror}); "
                                 "set sessions.dir to a writable folder or use --no-save") from None
        self.path = self.folder / "turns.jsonl"

    def append(self, record: TurnRecord, user_audio: np.ndarray | None, user_rate: int,
               reply_audio: np.ndarray | None, reply_rate: int) -> TurnRecord:
        """Writes the turn's audio, then its line; returns the record with the audio file names."""
        names: dict[str, str | None] = {"user_audio": None, "reply_audio": None}
        for key, audio, rate in (("user_audio", user_audio, user_rate), ("reply_audio", reply_audio, reply_rate)):
            if audio is not None and audio.size:
                name = f"turn{record.turn:03d}-{key.split('_')[0]}.wav"
                write_wav(self.folder / name, audio, rate)
                names[key] = name
        record = replace(record, **names)
        line = json.dumps(asdict(record), ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        return record


def read_turns(path: Path) -> list[dict[str, Any]]:
    """The turns of a session; a last line cut short by a crash is skipped."""
    turns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            turns.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return turns

