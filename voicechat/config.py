"""Typed configuration: one tree of frozen dataclasses, validated once at load.

Values come from built-in defaults, then a YAML file (--config, ./config.yaml or the user config
dir), then command-line flags. Every problem is reported as
``config.yaml: audio.vad.aggressiveness: expected an integer 0-3, got 7``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voicechat.errors import ConfigError

CONFIG_FILE_NAME = "config.yaml"


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}


# --- models ---------------------------------------------------------------------------------------

Device = str  # "auto", "cpu", "cuda", "cuda:1", "mps"
DType = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class ModelSpec:
    """Where one model comes from: a Hugging Face repo id (with optional revision), a fairseq2
    asset card name (SONAR) or a local path, and how to run it."""

    source: str
    revision: str | None = None
    device: Device = "auto"
    dtype: DType = "auto"


@dataclass(frozen=True)
class LMSpec(ModelSpec):
    quantization: Literal["none", "4bit"] = "none"


@dataclass(frozen=True)
class ModelsConfig:
    lm: LMSpec = LMSpec("THUDM/glm-4-voice-9b", dtype="bfloat16")
    speech_tokenizer: ModelSpec = ModelSpec("THUDM/glm-4-voice-tokenizer")
    decoder: ModelSpec = ModelSpec("THUDM/glm-4-voice-decoder")
    sonar_speech: ModelSpec = ModelSpec("sonar_speech_encoder_eng")
    sonar_text: ModelSpec = ModelSpec("text_sonar_basic_encoder")
    asr: ModelSpec = ModelSpec("openai/whisper-large-v3")
    cache_dir: str | None = None


# --- language model backend and generation --------------------------------------------------------


@dataclass(frozen=True)
class BackendConfig:
    kind: Literal["local", "glm-server", "openai"] = "local"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    connect_timeout_s: float = field(default=5.0, metadata=_range(0.1, 600))
    read_timeout_s: float = field(default=60.0, metadata=_range(0.1, 3600))
    retries: int = field(default=2, metadata=_range(0, 10))  # attempts before the first token


@dataclass(frozen=True)
class GenerationConfig:
    temperature: float = field(default=0.2, metadata=_range(0.0, 2.0))
    top_p: float = field(default=0.8, metadata=_range(0.0, 1.0))
    max_new_tokens: int = field(default=2000, metadata=_range(1, 32768))
    context_budget: int = field(default=8192, metadata=_range(256, 131072))
    # How retrieved passages enter the user turn; None is the study's template (voicechat.glm.prompt).
    rag_template: str | None = None
    passage_template: str | None = None


@dataclass(frozen=True)
class GenerationOverrides:
    temperature: float | None = field(default=None, metadata=_range(0.0, 2.0))
    top_p: float | None = field(default=None, metadata=_range(0.0, 1.0))
    max_new_tokens: int | None = field(default=None, metadata=_range(1, 32768))


@dataclass(frozen=True)
class VoicePreset:
    description: str
    instruction: str = ""
    generation: GenerationOverrides = GenerationOverrides()


DEFAULT_VOICES: dict[str, VoicePreset] = {
    "default": VoicePreset("The model's natural voice.", ""),
    "calm": VoicePreset(
        "Soft and relaxed.", "Speak in a calm, gentle and soothing tone, at an unhurried pace."
    ),
    "cheerful": VoicePreset(
        "Warm and upbeat.", "Speak in a cheerful, warm and lively tone.", GenerationOverrides(temperature=0.3)
    ),
    "brisk": VoicePreset(
        "Fast and to the point.",
        "Speak quickly and keep the answer very short: one or two sentences.",
        GenerationOverrides(max_new_tokens=600),
    ),
    "slow-and-clear": VoicePreset(
        "For listening in a noisy place or in a second language.",
        "Speak slowly and clearly, pronouncing every word carefully, with short sentences.",
    ),
    "storyteller": VoicePreset(
        "Expressive, like reading a story aloud.",
        "Speak expressively like a storyteller, with lively intonation and natural pauses.",
        GenerationOverrides(temperature=0.4),
    ),
    "mandarin": VoicePreset(
        "Answer in Mandarin Chinese.", "请用标准普通话回答，语气自然亲切。"
    ),
}


# --- audio ----------------------------------------------------------------------------------------


# Trailing silence (ms) that ends an utterance, per endpointing preset. Measured on spoken
# questions (scripts/bench_audio.py): pauses inside a question of up to about 1.0 s (relaxed),
# 0.5 s (default) and 0.2 s (aggressive) do not split it, even with noise at 10 dB SNR.
VAD_PRESETS: dict[str, int] = {"relaxed": 1200, "default": 700, "aggressive": 400}


@dataclass(frozen=True)
class VadConfig:
    """Endpointing: when the user has started and finished speaking."""

    preset: Literal["relaxed", "default", "aggressive"] = "default"
    aggressiveness: int = field(default=2, metadata=_range(0, 3))  # webrtcvad mode
    frame_ms: Literal[10, 20, 30] = 30
    trailing_silence_ms: int | None = field(default=None, metadata=_range(60, 10000))  # None: preset
    preroll_ms: int = field(default=300, metadata=_range(0, 2000))  # kept before the start
    start_window_ms: int = field(default=300, metadata=_range(30, 2000))
    start_speech_ms: int = field(default=150, metadata=_range(10, 2000))  # speech in the window that starts
    min_utterance_ms: int = field(default=250, metadata=_range(0, 10000))  # shorter ones are discarded
    max_utterance_s: float = field(default=30.0, metadata=_range(1, 600))
    energy_margin_db: float = field(default=6.0, metadata=_range(0, 40))  # above the noise floor
    noise_window_s: float = field(default=3.0, metadata=_range(0.5, 60))  # noise floor memory
    tail_ms: int = field(default=150, metadata=_range(0, 2000))  # audio kept after the speech
    level_interval_ms: int = field(default=50, metadata=_range(10, 1000))

    @property
    def trailing_ms(self) -> int:
        """The trailing silence in effect: the explicit value, else the preset's."""
        return self.trailing_silence_ms if self.trailing_silence_ms is not None else VAD_PRESETS[self.preset]


@dataclass(frozen=True)
class PlaybackConfig:
    lead_ms: int = field(default=80, metadata=_range(0, 2000))  # buffered before playback starts
    block_ms: int = field(default=20, metadata=_range(5, 200))
    fade_ms: float = field(default=5.0, metadata=_range(0, 50))  # ramps at gaps and on flush


@dataclass(frozen=True)
class AudioConfig:
    input_device: str | None = None  # index or part of the name; None: the system default
    output_device: str | None = None
    barge_in: bool = False  # speech during playback interrupts it (use headphones)
    echo_tail_ms: int = field(default=300, metadata=_range(0, 5000))  # half-duplex: deaf after playback
    capture_block_ms: int = field(default=40, metadata=_range(5, 200))  # 40: <2% CPU idle
    vad: VadConfig = VadConfig()
    playback: PlaybackConfig = PlaybackConfig()


# --- retrieval ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkingConfig:
    sentences_per_chunk: int = field(default=2, metadata=_range(1, 20))
    sentence_overlap: int = field(default=1, metadata=_range(0, 19))
    max_chunk_chars: int = field(default=400, metadata=_range(50, 4000))
    max_passage_chars: int = field(default=1500, metadata=_range(100, 20000))


@dataclass(frozen=True)
class RetrievalConfig:
    knowledge_dir: str = "knowledge"
    index_dir: str | None = None
    top_k: int = field(default=4, metadata=_range(1, 100))
    score_threshold: float = field(default=0.0, metadata=_range(-1.0, 1.0))
    rag: Literal["e2e", "asr", "off"] = "e2e"
    two_round: Literal["off", "rewrite", "fallback"] = "off"
    languages: tuple[str, ...] = ("eng_Latn", "zho_Hans")
    asr_language: str | None = None  # Whisper language code ("en", "zh"); None: detected
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    chunking: ChunkingConfig = ChunkingConfig()


# --- speech output, UI, sessions ------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """Streaming speech decoder. chunk_schedule: speech tokens per chunk (the last size repeats);
    overlap_frames: mel frames held back at a chunk's end and cross-faded into the next chunk;
    context_tokens: tokens before a chunk re-encoded as its condition (bounds the cost per chunk)."""

    chunk_schedule: tuple[int, ...] = (10, 25, 50, 100)
    seed: int = 42
    overlap_frames: int = field(default=20, metadata=_range(0, 200))
    context_tokens: int = field(default=30, metadata=_range(0, 500))


@dataclass(frozen=True)
class UIConfig:
    theme: str = "textual-dark"
    level_meter_hz: int = field(default=15, metadata=_range(1, 60))


@dataclass(frozen=True)
class SessionsConfig:
    save: bool = True
    dir: str | None = None


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int | None = field(default=None, metadata=_range(1, 1024))  # None: torch's default


@dataclass(frozen=True)
class Config:
    models: ModelsConfig = ModelsConfig()
    backend: BackendConfig = BackendConfig()
    generation: GenerationConfig = GenerationConfig()
    voice: str = "default"
    voices: dict[str, VoicePreset] = field(default_factory=lambda: dict(DEFAULT_VOICES))
    audio: AudioConfig = AudioConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    decoder: DecoderConfig = DecoderConfig()
    ui: UIConfig = UIConfig()
    sessions: SessionsConfig = SessionsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    offline: bool = False
    source: str = field(default="built-in defaults", metadata={"internal": True})

    def voice_preset(self, name: str | None = None) -> VoicePreset:
        name = name or self.voice
        if name not in self.voices:
            raise ConfigError(f"unknown voice preset {name!r}; choose one of: {', '.join(self.voices)}")
        return self.voices[name]

    def resolve_path(self, value: str) -> Path:
        """Paths in a config file are relative to that file's folder."""
        path = Path(os.path.expanduser(value))
        if path.is_absolute() or self.source == "built-in defaults":
            return path
        return Path(self.source).parent / path


# --- loading --------------------------------------------------------------------------------------


def default_config_path() -> Path | None:
    """--config is handled by the caller; this is ./config.yaml, else the user config dir."""
    local = Path.cwd() / CONFIG_FILE_NAME
    if local.is_file():
        return local
    from platformdirs import user_config_dir

    user = Path(user_config_dir("voicechat")) / CONFIG_FILE_NAME
    return user if user.is_file() else None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate; ``overrides`` are dotted keys from command-line flags."""
    data: dict[str, Any] = {}
    label = "built-in defaults"
    if path is None:
        path = default_config_path()
    if path is not None:
        label = str(path)
        data = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    config = _build(Config, data, label, "")
    config = dataclasses.replace(config, source=label)
    config.voice_preset()  # an unknown selected voice is a config error, reported now
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _build(cls: type, data: Any, label: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: {where or 'top level'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"{label}: {dotted}: unknown key{_suggest(key, fields)}")
        values[key] = _convert(hints[key], value, fields[key], label, dotted, cls)
    for name, spec in fields.items():
        if name not in values and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{label}: {where}.{name}: required key is missing")
    return cls(**values)


def _convert(hint: Any, value: Any, spec: dataclasses.Field, label: str, dotted: str, owner: type) -> Any:
    if owner is Config and spec.name == "voices":
        return _build_voices(value, label, dotted)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value  # a default carried over by a merge
        if owner is ModelsConfig and isinstance(value, str):
            value = {"source": value}  # "lm: ./my-model" is short for "lm: {source: ./my-model}"
        base = getattr(owner(), spec.name) if _has_default_instance(owner) else None
        merged = {**_as_dict(base), **value} if isinstance(value, dict) and base is not None else value
        return _build(hint, merged, label, dotted)
    return _scalar(hint, value, spec, label, dotted)


def _has_default_instance(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _as_dict(instance: Any) -> dict[str, Any]:
    """Shallow: nested dataclasses stay objects and are re-validated as given values are merged."""
    if instance is None:
        return {}
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _build_voices(value: Any, label: str, dotted: str) -> dict[str, VoicePreset]:
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: {dotted}: expected a mapping of preset names, got {_show(value)}")
    voices = dict(DEFAULT_VOICES)
    for name, preset in value.items():
        voices[str(name)] = _build(VoicePreset, preset, label, f"{dotted}.{name}")
    return voices


def _scalar(hint: Any, value: Any, spec: dataclasses.Field, label: str, dotted: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _scalar(inner, value, spec, label, dotted)
    if origin is Literal:
        if value is False and "off" in args:
            value = "off"  # YAML 1.1 reads a bare `off` as false
        if value in args and not isinstance(value, bool):
            return value
        raise ConfigError(
            f"{label}: {dotted}: expected one of {', '.join(map(str, args))}, got {_show(value)}"
            + _suggest(str(value), [str(a) for a in args])
        )
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{label}: {dotted}: expected a list, got {_show(value)}")
        return tuple(_scalar(args[0], item, spec, label, f"{dotted}[{i}]") for i, item in enumerate(value))
    return _checked(hint, value, spec, label, dotted)


def _checked(hint: Any, value: Any, spec: dataclasses.Field, label: str, dotted: str) -> Any:
    low, high = spec.metadata.get("range", (None, None))
    bounds = f" {_fmt(low)}-{_fmt(high)}" if low is not None and high is not None else ""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{label}: {dotted}: expected true or false, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{label}: {dotted}: expected a string, got {_show(value)}")
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        noun = "an integer"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        noun = "a number"
    else:
        raise TypeError(f"unsupported config type {hint!r} at {dotted}")
    if ok and (low is None or value >= low) and (high is None or value <= high):
        return hint(value)
    raise ConfigError(f"{label}: {dotted}: expected {noun}{bounds}, got {_show(value)}")


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return str(value)


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
