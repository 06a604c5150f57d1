"""Where each model's files come from: a local folder, the Hugging Face cache (downloaded on first
use), or a fairseq2 asset card (SONAR). One place decides, so that a missing model is reported once,
within seconds, with the command that fetches it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from voicechat.config import Config, ModelSpec
from voicechat.errors import ModelError
from voicechat.sonar_cards import download_sonar_model, sonar_model_status

Kind = Literal["local", "hub", "fairseq2"]
State = Literal["local", "cached", "missing"]

# Only the files our loaders read: the hub repos also carry remote code and other formats.
# Each pattern must match at least one file for a cached copy to count as complete.
LM_TOKENIZER_FILES = ["tokenizer_config.json", "tokenizer.model"]
HUB_FILES: dict[str, list[str]] = {
    "lm": ["*.json", "*.safetensors", "tokenizer.model"],
    "speech_tokenizer": ["*.json", "*.safetensors"],
    "decoder": ["config.yaml", "flow.pt", "hift.pt"],
    "asr": ["*.json", "model.safetensors", "*.txt"],
    "turn": ["smart-turn-v3.2-cpu.onnx"],  # int8, for CPUs; the repo also has a GPU variant
    "omni": ["*.json", "*.safetensors", "spk_dict.pt", "merges.txt", "vocab.json"],  # Qwen2.5-Omni
}
TURN_MODEL_FILE = HUB_FILES["turn"][0]

ROLE_NAMES: dict[str, str] = {
    "lm": "voice language model",
    "speech_tokenizer": "speech tokenizer",
    "decoder": "speech decoder",
    "sonar_speech": "SONAR speech encoder",
    "sonar_text": "SONAR text encoder",
    "asr": "ASR model (Whisper)",
    "turn": "end-of-turn model",
    "omni": "voice model (Qwen2.5-Omni)",
}

PULL_HINT = "run `voicechat models pull` where the model hub can be reached"


@dataclass(frozen=True)
class ModelStatus:
    role: str
    spec: ModelSpec
    kind: Kind
    state: State
    path: Path | None = None
    size_bytes: int | None = None

    @property
    def label(self) -> str:
        return f"{ROLE_NAMES.get(self.role, self.role)} ({self.spec.source})"


def source_kind(source: str) -> Kind:
    """A path if it looks like one or exists; 'org/name' is a hub repo; a bare name is a card."""
    if source.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(source)):
        return "local"
    return "hub" if "/" in source else "fairseq2"


def needed_roles(config: Config) -> list[str]:
    """The models this configuration actually uses."""
    retrieval = config.retrieval
    if config.voice_model == "qwen2.5-omni":
        roles = ["omni"]  # audio encoder, thinker, talker and token2wav in one checkpoint
    else:
        roles = ["lm", "speech_tokenizer", "decoder"]  # with a remote backend, only the LM's tokenizer
    if retrieval.rag != "off":
        roles.append("sonar_text")
    if retrieval.rag == "e2e":
        roles.append("sonar_speech")
    if retrieval.rag == "asr" or retrieval.two_round == "fallback":
        roles.append("asr")
    return roles


def optional_roles(config: Config) -> list[str]:
    """Models used when present; without them a feature falls back (the end-of-turn model)."""
    return ["turn"] if config.audio.turn == "smart" else []


def model_status(role: str, spec: ModelSpec, config: Config) -> ModelStatus:
    """Looks only at the disk: never touches the network."""
    kind = source_kind(spec.source)
    if kind == "local":
        path = config.resolve_path(spec.source)
        state: State = "local" if path.exists() else "missing"
        return ModelStatus(role, spec, kind, state, path, _size(path) if state == "local" else None)
    if kind == "hub":
        path = _hub_snapshot(spec, hub_files(role, config), config.models.cache_dir, local_only=True)
        return ModelStatus(role, spec, kind, "cached" if path else "missing", path, _size(path) if path else None)
    state, path = sonar_model_status(spec.source)
    return ModelStatus(role, spec, kind, state, path, _size(path) if path else None)


def resolve_model(role: str, config: Config) -> Path:
    """The local folder (or file) of one model, downloading it first when allowed."""
    spec: ModelSpec = getattr(config.models, role)
    status = model_status(role, spec, config)
    if status.path is not None and status.state != "missing":
        return status.path
    if status.kind == "local":
        raise ModelError(f"{status.label}: no such file or folder: {status.path}")
    if status.kind == "fairseq2":
        raise ModelError(f"{status.label} is not in the fairseq2 cache; {PULL_HINT}")
    if _offline(config):
        raise ModelError(f"{status.label} is not downloaded and voicechat is offline; {PULL_HINT}")
    return _download(role, spec, config)


def hub_files(role: str, config: Config) -> list[str]:
    if role == "lm" and config.backend.kind != "local":
        return LM_TOKENIZER_FILES
    return HUB_FILES[role]


def ensure_models(config: Config, roles: list[str] | None = None) -> dict[str, Path]:
    """Resolve every needed model, or fail once naming all the missing ones."""
    roles = roles or needed_roles(config)
    statuses = [model_status(role, getattr(config.models, role), config) for role in roles]
    missing = [s for s in statuses if s.state == "missing"]
    if any(s.kind != "hub" or _offline(config) for s in missing):
        names = "; ".join(f"{s.label}: no such file or folder" if s.kind == "local" else s.label for s in missing)
        hint = f"; {PULL_HINT}" if any(s.kind != "local" for s in missing) else ""
        raise ModelError(f"missing models: {names}{hint}")
    paths: dict[str, Path] = {}
    for status in statuses:
        if status.state == "missing":
            paths[status.role] = _download(status.role, status.spec, config)
        else:
            assert status.path is not None
            paths[status.role] = status.path
    return paths


def pull(config: Config, roles: list[str]) -> dict[str, Path]:
    """Download (resuming partial files) every hub and fairseq2 model in ``roles``."""
    if _offline(config):
        raise ModelError("cannot pull models while offline (--offline, offline: true or HF_HUB_OFFLINE)")
    paths: dict[str, Path] = {}
    for role in roles:
        spec: ModelSpec = getattr(config.models, role)
        kind = source_kind(spec.source)
        if kind == "hub":
            paths[role] = _download(role, spec, config)
        elif kind == "fairseq2":
            paths[role] = download_sonar_model(spec.source)
        else:
            paths[role] = resolve_model(role, config)
    return paths


def _offline(config: Config) -> bool:
    return config.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_snapshot(spec: ModelSpec, files: list[str], cache_dir: str | None, local_only: bool) -> Path | None:
    """The snapshot folder holding ``files``; None when (part of) it is not on disk."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(spec.source, revision=spec.revision, cache_dir=cache_dir,
                                        allow_patterns=files, local_files_only=local_only))
    except LocalEntryNotFoundError:
        return None
    complete = all(any(folder.glob(pattern)) for pattern in files)
    return folder if complete else None


def _download(role: str, spec: ModelSpec, config: Config) -> Path:
    """Hub download with huggingface_hub's progress bars; partial files resume on the next try."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    label = f"{ROLE_NAMES.get(role, role)} ({spec.source})"
    try:
        path = _hub_snapshot(spec, hub_files(role, config), config.models.cache_dir, local_only=False)
    except RepositoryNotFoundError:
        raise ModelError(f"{label}: no such repository on the model hub (check models.{role}.source)") from None
    except RevisionNotFoundError:
        raise ModelError(f"{label}: revision {spec.revision!r} not found (check models.{role}.revision)") from None
    except (HfHubHTTPError, OSError) as error:
        raise ModelError(f"{label}: download failed ({_first_line(error)}); check the network and retry") from None
    if path is None:
        raise ModelError(f"{label} could not be downloaded: the model hub is unreachable; {PULL_HINT}")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size  # follows hub cache symlinks to blobs
            except OSError:
                pass
    return total
