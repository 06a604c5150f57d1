"""Typed configuration: one tree of frozen dataclasses, validated once at load.

Values come from built-in defaults, then a YAML file (--config, ./config.yaml or the user config
dir), then command-line flags. Every problem is reported as
``config.yaml: audio.vad.aggressiveness: expected an integer 0-3, got 7``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voicechat.errors import ConfigError

CONFIG_FILE_NAME = "config.yaml"


def _range(low: float | None = None, high: float | None = None, **more: Any) -> dict[str, Any]:
    """Field metadata: the bounds of a number (of each item, for a list) and further checks:
    ``min_items`` for a list, ``pattern`` (a regular expression and its description in words),
    ``languages`` (a function returning the allowed language codes, or None when they cannot be
    known here), ``template`` (placeholder name -> (least, most) uses, most None for any)."""
    return {"range": (low, high), **more}


# --- models ---------------------------------------------------------------------------------------

Device = str  # "auto", "cpu", "cuda", "cuda:1", "mps"
DEVICE_PATTERN = (r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps")  # (regex, in words)
DType = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class ModelSpec:
    """Where one model comes from: a Hugging Face repo id (with optional revision), a fairseq2
    asset card name (SONAR) or a local path, and how to run it."""

    source: str
    revision: str | None = None
    device: Device = field(default="auto", metadata={"pattern": DEVICE_PATTERN})
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
    turn: ModelSpec = ModelSpec("pipecat-ai/smart-turn-v3", device="cpu")  # end of turn (audio.turn: smart)
    omni: ModelSpec = ModelSpec("Qwen/Qwen2.5-Omni-7B", dtype="bfloat16")  # voice_model: qwen2.5-omni (or -3B)
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


# Placeholders of the prompt templates: name -> (least, most) uses; most None: any number.
RAG_TEMPLATE_FIELDS: dict[str, tuple[int, int | None]] = {"question": (1, 1), "passages": (1, 1)}
PASSAGE_TEMPLATE_FIELDS: dict[str, tuple[int, int | None]] = {"source": (0, None), "text": (1, None)}


def template_problem(text: str, fields: dict[str, tuple[int, int | None]]) -> str | None:
    """What is wrong with a prompt template (str.format syntax: literal braces are doubled, {{
    and }}), or None when it uses only ``fields``, each as often as allowed."""
    import string

    names = " and ".join(f"{{{name}}}" for name in fields)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return f"a brace without its pair; placeholders are {names}, and a literal brace is written twice ({{{{ or }}}})"
    used: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return (f"unknown placeholder {shown}{_suggest(name, fields)}; only {names} may be used, "
                    "and a literal brace is written twice ({{ or }})")
        used.append(name)
    for name, (least, most) in fields.items():
        count = used.count(name)
        if count < least or (most is not None and count > most):
            times = "exactly once" if least == most == 1 else "at least once"
            return f"must contain {{{name}}} {times}"
    return None


@dataclass(frozen=True)
class GenerationConfig:
    temperature: float = field(default=0.2, metadata=_range(0.0, 2.0))
    top_p: float = field(default=0.8, metadata=_range(0.0, 1.0))
    max_new_tokens: int = field(default=2000, metadata=_range(1, 32768))
    context_budget: int = field(default=8192, metadata=_range(256, 131072))
    # How retrieved passages enter the user turn; None is the study's template (voicechat.glm.prompt).
    rag_template: str | None = field(default=None, metadata={"template": RAG_TEMPLATE_FIELDS})
    passage_template: str | None = field(default=None, metadata={"template": PASSAGE_TEMPLATE_FIELDS})


@dataclass(frozen=True)
class GenerationOverrides:
    temperature: float | None = field(default=None, metadata=_range(0.0, 2.0))
    top_p: float | None = field(default=None, metadata=_range(0.0, 1.0))
    max_new_tokens: int | None = field(default=None, metadata=_range(1, 32768))


VoiceModel = Literal["glm-4-voice", "qwen2.5-omni"]


@dataclass(frozen=True)
class VoicePreset:
    description: str
    instruction: str = ""
    generation: GenerationOverrides = GenerationOverrides()
    speaker: str | None = None  # Qwen2.5-Omni: a speaker of the checkpoint (Chelsie, Ethan); null: Chelsie
    voice_model: VoiceModel | None = None  # the voice model it is for; null: either (qwen2.5-omni with a speaker)

    def fits(self, voice_model: str) -> bool:
        if self.voice_model is not None:
            return self.voice_model == voice_model
        return self.speaker is None or voice_model == "qwen2.5-omni"


# GLM-4-Voice follows a spoken-style instruction; Qwen2.5-Omni's talker speaks as one of its
# speakers (its model card fixes the system prompt for speech output).
_GLM = "glm-4-voice"
DEFAULT_VOICES: dict[str, VoicePreset] = {
    "default": VoicePreset("The model's natural voice.", ""),
    "calm": VoicePreset(
        "Soft and relaxed.", "Speak in a calm, gentle and soothing tone, at an unhurried pace.", voice_model=_GLM
    ),
    "cheerful": VoicePreset(
        "Warm and upbeat.", "Speak in a cheerful, warm and lively tone.", GenerationOverrides(temperature=0.3),
        voice_model=_GLM,
    ),
    "brisk": VoicePreset(
        "Fast and to the point.",
        "Speak quickly and keep the answer very short: one or two sentences.",
        GenerationOverrides(max_new_tokens=600),
        voice_model=_GLM,
    ),
    "slow-and-clear": VoicePreset(
        "For listening in a noisy place or in a second language.",
        "Speak slowly and clearly, pronouncing every word carefully, with short sentences.",
        voice_model=_GLM,
    ),
    "storyteller": VoicePreset(
        "Expressive, like reading a story aloud.",
        "Speak expressively like a storyteller, with lively intonation and natural pauses.",
        GenerationOverrides(temperature=0.4),
        voice_model=_GLM,
    ),
    "mandarin": VoicePreset(
        "Answer in Mandarin Chinese.", "请用标准普通话回答，语气自然亲切。", voice_model=_GLM
    ),
    # Qwen2.5-Omni's two speakers
    "chelsie": VoicePreset("Qwen2.5-Omni's female voice, Chelsie.", "", speaker="Chelsie", voice_model="qwen2.5-omni"),
    "ethan": VoicePreset("Qwen2.5-Omni's male voice, Ethan.", "", speaker="Ethan", voice_model="qwen2.5-omni"),
}


# --- audio ----------------------------------------------------------------------------------------


# Trailing silence (ms) that ends an utterance, per endpointing preset. Measured on spoken
# questions (scripts/bench_audio.py): pauses inside a question of up to about 1.0 s (relaxed),
# 0.5 s (default) and 0.2 s (aggressive) do not split it, even with noise at 10 dB SNR.
VAD_PRESETS: dict[str, int] = {"relaxed": 1200, "default": 700, "aggressive": 400}


class TurnPreset(typing.NamedTuple):
    """audio.turn: smart: after ``silence_ms`` the end-of-turn model is asked; a probability of at
    least ``threshold`` ends the utterance, else it ends after ``longest_ms`` of silence."""

    silence_ms: int
    threshold: float
    longest_ms: int


# Chosen from the trade-off curve of scripts/bench_turn.py (Piper questions with a 0.3-1.0 s pause
# inside, 20/10/5 dB SNR). default: fewer questions cut inside 0.3, 0.5 and 1.0 s pauses than the
# 700 ms silence and a decision ~30 ms sooner (p50 589 ms); aggressive: as few cuts as its 400 ms
# silence, decided after 136 ms instead of 366 (p50); relaxed: decided after 811 ms instead of
# 1121 (p50) but cuts more 0.7-1.0 s pauses than its 1.2 s silence. The model hears these
# synthetic unfinished phrases as finished too often for an earlier first check. These delays are on
# the audio's clock; counting the model's compute in the decision (78 ms a call on a loaded 2-core
# CPU), the default's p50 was 726 ms against 618 ms for the 700 ms silence.
TURN_PRESETS: dict[str, TurnPreset] = {
    "relaxed": TurnPreset(600, 0.98, 1200),
    "default": TurnPreset(450, 0.5, 1200),
    "aggressive": TurnPreset(150, 0.5, 700),
}


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
    # audio.turn: smart: the end-of-turn model is asked after turn_silence_ms of silence, and again
    # after each further turn_check_ms; it ends the utterance when it says "complete" with
    # turn_threshold; None: from the preset (TURN_PRESETS)
    turn_silence_ms: int | None = field(default=None, metadata=_range(30, 10000))
    turn_check_ms: int = field(default=150, metadata=_range(30, 2000))
    turn_threshold: float | None = field(default=None, metadata=_range(0.0, 1.0))
    # silence after speech that is a pause: the screen says "pausing" and, with audio.preemptive,
    # the reply is prepared on the utterance so far
    pause_ms: int = field(default=200, metadata=_range(30, 10000))

    @property
    def trailing_ms(self) -> int:
        """The trailing silence in effect: the explicit value, else the preset's."""
        return self.trailing_silence_ms if self.trailing_silence_ms is not None else VAD_PRESETS[self.preset]

    @property
    def smart(self) -> TurnPreset:
        """What audio.turn: smart uses: the explicit values, else the preset's."""
        preset = TURN_PRESETS[self.preset]
        return TurnPreset(
            self.turn_silence_ms if self.turn_silence_ms is not None else preset.silence_ms,
            self.turn_threshold if self.turn_threshold is not None else preset.threshold,
            self.trailing_silence_ms if self.trailing_silence_ms is not None else preset.longest_ms,
        )


@dataclass(frozen=True)
class PlaybackConfig:
    lead_ms: int = field(default=80, metadata=_range(0, 2000))  # buffered before playback starts
    block_ms: int = field(default=20, metadata=_range(5, 200))
    fade_ms: float = field(default=5.0, metadata=_range(0, 50))  # ramps at gaps and on flush


@dataclass(frozen=True)
class AudioConfig:
    # an index or a part of the name (see `voicechat devices`); None: the system default
    input_device: str | int | None = field(default=None, metadata=_range(0, None))
    output_device: str | int | None = field(default=None, metadata=_range(0, None))
    echo_cancellation: bool = True  # take the assistant's voice out of the microphone (WebRTC AEC3)
    barge_in: bool | None = None  # speech during playback interrupts it; None: when echo is cancelled
    echo_tail_ms: int = field(default=300, metadata=_range(0, 5000))  # half-duplex: deaf after playback
    capture_block_ms: int = field(default=40, metadata=_range(5, 200))  # 40: <2% CPU idle
    turn: Literal["silence", "smart"] = "smart"  # how the end of a question is decided
    preemptive: bool = True  # prepare the reply in the pause, play it when the end is confirmed
    vad: VadConfig = VadConfig()
    playback: PlaybackConfig = PlaybackConfig()


# --- retrieval ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkingConfig:
    sentences_per_chunk: int = field(default=2, metadata=_range(1, 20))
    sentence_overlap: int = field(default=1, metadata=_range(0, 19))
    max_chunk_chars: int = field(default=400, metadata=_range(50, 4000))
    max_passage_chars: int = field(default=1500, metadata=_range(100, 20000))


@functools.lru_cache(maxsize=1)
def sonar_text_languages() -> frozenset[str] | None:
    """The language codes of SONAR's text encoder (NLLB's 200), read from the card in the
    installed sonar package without importing it; None when sonar is not installed."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("sonar")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        card = Path(folder) / "cards" / "text_sonar_basic_encoder.yaml"
        try:
            data = yaml.safe_load(card.read_text(encoding="utf-8"))
            return frozenset(str(lang) for lang in data["tokenizer_config"]["_set_"]["langs"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
    return None


@dataclass(frozen=True)
class RetrievalConfig:
    knowledge_dir: str = "knowledge"
    index_dir: str | None = None
    top_k: int = field(default=4, metadata=_range(1, 100))
    score_threshold: float = field(default=0.0, metadata=_range(-1.0, 1.0))
    rag: Literal["e2e", "asr", "off"] = "e2e"
    two_round: Literal["off", "rewrite", "fallback"] = "off"
    languages: tuple[str, ...] = field(default=("eng_Latn", "zho_Hans"),
                                       metadata=_range(min_items=1, languages=sonar_text_languages))
    asr_language: str | None = None  # Whisper language code ("en", "zh"); None: detected
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    chunking: ChunkingConfig = ChunkingConfig()


# --- speech output, UI, sessions ------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """Streaming speech decoder. chunk_schedule: speech tokens per chunk (the last size repeats);
    overlap_frames: mel frames held back at a chunk's end and cross-faded into the next chunk;
    context_tokens: tokens before a chunk re-encoded as its condition (bounds the cost per chunk)."""

    chunk_schedule: tuple[int, ...] = field(default=(10, 25, 50, 100), metadata=_range(1, 1000, min_items=1))
    seed: int = field(default=42, metadata=_range(0, 2**31 - 1))
    overlap_frames: int = field(default=20, metadata=_range(0, 200))
    context_tokens: int = field(default=30, metadata=_range(0, 500))


@dataclass(frozen=True)
class QwenConfig:
    """voice_model: qwen2.5-omni. The talker's codes are decoded by token2wav in windows of DiT
    blocks (24 mel frames = 12 codes = 0.24 s) with look_back and look_ahead blocks around each."""

    talker_max_new_tokens: int = field(default=4096, metadata=_range(1, 32768))  # codes: 50 per second
    talker_temperature: float = field(default=0.9, metadata=_range(0.0, 2.0))  # 0: greedy
    first_chunk_blocks: int = field(default=2, metadata=_range(1, 100))
    chunk_blocks: int = field(default=1, metadata=_range(1, 100))
    look_back_blocks: int = field(default=4, metadata=_range(0, 100))
    look_ahead_blocks: int = field(default=2, metadata=_range(0, 100))
    seed: int = field(default=42, metadata=_range(0, 2**31 - 1))  # token2wav's noise


@dataclass(frozen=True)
class ServeConfig:
    """`voicechat serve`: limits on what a client may ask of this machine."""

    max_new_tokens: int = field(default=4096, metadata=_range(1, 32768))  # larger requests are refused
    # `serve --engine`: the largest WebSocket message, and the longest spoken question, it takes
    max_frame_bytes: int = field(default=4 * 1024 * 1024, metadata=_range(64 * 1024, 256 * 1024 * 1024))
    max_utterance_s: float = field(default=60.0, metadata=_range(1, 600))


@dataclass(frozen=True)
class RemoteEngineConfig:
    """A remote engine (`voicechat serve --engine` on another machine): the TUI, `ask` and `eval`
    send it their questions instead of loading the models here."""

    url: str | None = field(default=None, metadata={"pattern": (r"wss?://\S+", "a ws:// or wss:// address")})
    token_env: str | None = None  # the environment variable holding the server's bearer token


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
    voice_model: VoiceModel = "glm-4-voice"
    models: ModelsConfig = ModelsConfig()
    backend: BackendConfig = BackendConfig()
    generation: GenerationConfig = GenerationConfig()
    voice: str = "default"
    voices: dict[str, VoicePreset] = field(default_factory=lambda: dict(DEFAULT_VOICES))
    audio: AudioConfig = AudioConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    decoder: DecoderConfig = DecoderConfig()
    qwen: QwenConfig = QwenConfig()
    serve: ServeConfig = ServeConfig()
    engine: RemoteEngineConfig = RemoteEngineConfig()
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

    @property
    def model_voices(self) -> dict[str, VoicePreset]:
        """The voice presets the loaded voice model can speak with."""
        return {name: preset for name, preset in self.voices.items() if preset.fits(self.voice_model)}

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
    _check_voices(config)  # an unknown or unfitting selected voice is a config error, reported now
    return config


def _check_voices(config: Config) -> None:
    for name, preset in config.voices.items():
        if preset.speaker and preset.voice_model == "glm-4-voice":
            raise ConfigError(f"{config.source}: voices.{name}: a speaker is a Qwen2.5-Omni voice; "
                              "remove speaker or set voice_model: qwen2.5-omni")
    if not config.voice_preset().fits(config.voice_model):
        raise ConfigError(f"{config.source}: voice preset {config.voice!r} is not for {config.voice_model}; "
                          f"choose one of: {', '.join(config.model_voices)}")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as duplicate:
        raise ConfigError(f"{path}: line {duplicate.line}: {duplicate.dotted}: duplicate key (first on line "
                          f"{duplicate.first_line}); give each key once") from None
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


class _DuplicateKey(Exception):
    def __init__(self, dotted: str, line: int, first_line: int) -> None:
        super().__init__(dotted)
        self.dotted, self.line, self.first_line = dotted, line, first_line


@functools.lru_cache(maxsize=1)
def _unique_key_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last one
    silently). Each mapping learns its dotted path from its parent, so the error can name it."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.paths: dict[int, str] = {}  # id(node) -> dotted path, for nested nodes

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            where = self.paths.get(id(node), "")
            seen: dict[Any, Any] = {}  # key -> its first node
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges; its keys may be overridden
                key = self.construct_object(key_node, deep=True)
                dotted = f"{where}.{key}" if where else str(key)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise _DuplicateKey(dotted, key_node.start_mark.line + 1, first.start_mark.line + 1)
                self.paths[id(value_node)] = dotted
            return super().construct_mapping(node, deep)

        def construct_sequence(self, node: Any, deep: bool = False) -> list[Any]:
            where = self.paths.get(id(node), "")
            for index, item in enumerate(node.value):
                self.paths[id(item)] = f"{where}[{index}]"
            return super().construct_sequence(node, deep)

    return UniqueKeyLoader


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
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # str | int: the type the value has
            fitting = [a for a in inner if _is_a(value, a)]
            if not fitting:
                expected = " or ".join(_NOUNS.get(a, str(a)) for a in inner)
                raise ConfigError(f"{label}: {dotted}: expected {expected}, got {_show(value)}")
            inner = fitting[:1]
        return _scalar(inner[0], value, spec, label, dotted)
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
        least = spec.metadata.get("min_items", 0)
        if len(value) < least:
            raise ConfigError(f"{label}: {dotted}: expected a list of at least {least} item{'s' * (least > 1)}, "
                              f"got {'an empty list' if not value else len(value)}")
        return tuple(_scalar(args[0], item, spec, label, f"{dotted}[{i}]") for i, item in enumerate(value))
    return _checked(hint, value, spec, label, dotted)


_NOUNS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _is_a(value: Any, hint: Any) -> bool:
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint) if isinstance(hint, type) else False


def _checked_string(value: str, spec: dataclasses.Field, label: str, dotted: str) -> str:
    """A string's further checks: a pattern, a language code, or a prompt template's placeholders."""
    pattern, described = spec.metadata.get("pattern", (None, None))
    if pattern and not re.fullmatch(pattern, value):
        raise ConfigError(f"{label}: {dotted}: expected {described}, got {value!r}")
    languages = spec.metadata.get("languages")
    allowed = languages() if languages else None
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{label}: {dotted}: unknown language {value!r}; expected a SONAR code such as "
                          f"eng_Latn or zho_Hans{_suggest(value, allowed)}")
    fields = spec.metadata.get("template")
    problem = template_problem(value, fields) if fields else None
    if problem:
        raise ConfigError(f"{label}: {dotted}: {problem}")
    return value


def _checked(hint: Any, value: Any, spec: dataclasses.Field, label: str, dotted: str) -> Any:
    low, high = spec.metadata.get("range", (None, None))
    if low is not None and high is not None:
        bounds = f" {_fmt(low)}-{_fmt(high)}"
    else:
        bounds = f" >= {_fmt(low)}" if low is not None else f" <= {_fmt(high)}" if high is not None else ""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{label}: {dotted}: expected true or false, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return _checked_string(value, spec, label, dotted)
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
