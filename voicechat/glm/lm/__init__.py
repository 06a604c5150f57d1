"""GLM-4-Voice language-model backends behind one streaming interface.

A backend turns prompt token ids into the reply's token ids as they are generated:
``stream(prompt_ids, params, cancel) -> Iterator[int]``. When the model ends its reply with a
stop token (<|user|>), that token is the last one yielded. Setting ``cancel`` ends the stream
within one token. Failures are BackendError (or ModelError while loading).

- local: the model in this process (transformers, GPU or CPU);
- glm-server: the reference model_server.py protocol, also served by `voicechat serve`;
- openai: an OpenAI-compatible completions endpoint (vLLM, SGLang) for multi-GPU serving.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from voicechat.errors import ConfigError

if TYPE_CHECKING:
    from voicechat.config import BackendConfig, GenerationConfig, LMSpec, VoicePreset
    from voicechat.glm.text_tokenizer import GlmTextTokenizer

DEFAULT_GLM_SERVER_URL = "http://127.0.0.1:10000"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.2
    top_p: float = 0.8
    max_new_tokens: int = 2000
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None
    speaker: str | None = None  # the voice preset's speaker (Qwen2.5-Omni); GLM-4-Voice has one voice

    @classmethod
    def from_config(cls, generation: GenerationConfig, stop_ids: tuple[int, ...],
                    preset: VoicePreset | None = None) -> SamplingParams:
        """The config's generation settings with the voice preset's overrides applied."""
        overrides = preset.generation if preset else None

        def pick(name: str) -> float | int:
            value = getattr(overrides, name, None) if overrides else None
            return getattr(generation, name) if value is None else value

        return cls(float(pick("temperature")), float(pick("top_p")), int(pick("max_new_tokens")), tuple(stop_ids),
                   speaker=preset.speaker if preset else None)


class LMBackend(Protocol):
    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        ...

    def close(self) -> None:
        ...


def open_backend(backend: BackendConfig, tokenizer: GlmTextTokenizer, lm: LMSpec | None = None,
                 lm_path: Path | None = None) -> LMBackend:
    """The backend the config names. ``lm_path`` (the resolved model folder) is needed for local."""
    if backend.kind == "local":
        from voicechat.glm.lm.local import LocalBackend

        if lm_path is None or lm is None:
            raise ConfigError("backend.kind local needs the language model (models.lm)")
        return LocalBackend.from_pretrained(lm_path, device=lm.device, dtype=lm.dtype, quantization=lm.quantization)
    from voicechat.glm.lm.http_stream import HttpSettings

    settings = HttpSettings.from_config(backend)
    if backend.kind == "glm-server":
        from voicechat.glm.lm.glm_server import GlmServerBackend

        return GlmServerBackend(backend.url or DEFAULT_GLM_SERVER_URL, tokenizer, settings)
    from voicechat.glm.lm.openai import OpenAIBackend

    if not backend.url:
        raise ConfigError("backend.kind openai needs backend.url, e.g. http://gpu-box:8000/v1")
    return OpenAIBackend(backend.url, tokenizer, settings, model=backend.model)
