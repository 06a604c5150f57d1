"""Load everything a conversation runs on, once, reporting progress model by model."""

from __future__ import annotations

from typing import Callable

from voicechat.config import Config
from voicechat.engine import Components
from voicechat.errors import VoicechatError

Progress = Callable[[str, int, int], None]  # (what is loading now, steps done, steps in all)


def retrieval_modes(rag: str, two_round: str) -> set[str]:
    """The retrieval modes a setting needs loaded; typed questions and the rewrite round always
    use the text encoder."""
    modes = {"text"} if rag != "off" else set()
    if rag in ("e2e", "asr"):
        modes.add(rag)
    if rag != "off" and two_round == "fallback":
        modes.add("asr")
    return modes


def load_components(config: Config, progress: Progress | None = None,
                    on_warning: Callable[[str], None] | None = None) -> Components:
    if config.voice_model == "qwen2.5-omni":
        return load_qwen_components(config, progress, on_warning)
    from voicechat.glm.decoder.model import SpeechDecoder
    from voicechat.glm.lm import open_backend
    from voicechat.glm.prompt import PromptBuilder, PromptTemplates
    from voicechat.glm.speech_tokenizer import SpeechTokenizer
    from voicechat.glm.text_tokenizer import GlmTextTokenizer
    from voicechat.models import ensure_models

    report = progress or (lambda step, done, total: None)
    total = 6
    report("checking models", 0, total)
    paths = ensure_models(config)
    models = config.models
    report("text tokenizer", 1, total)
    text_tokenizer = GlmTextTokenizer.from_pretrained(paths["lm"])
    prompts = PromptBuilder(text_tokenizer, PromptTemplates.from_config(config.generation))
    report("voice language model", 2, total)
    backend = open_backend(config.backend, text_tokenizer, lm=models.lm, lm_path=paths["lm"])
    try:
        report("speech tokenizer", 3, total)
        speech_tokenizer = SpeechTokenizer.from_pretrained(
            paths["speech_tokenizer"], models.speech_tokenizer.device, models.speech_tokenizer.dtype)
        report("speech decoder", 4, total)
        decoder = SpeechDecoder.from_pretrained(paths["decoder"], models.decoder.device, models.decoder.dtype)
        report("retrieval", 5, total)
        retriever = load_retriever_or_warn(config, on_warning)
    except BaseException:
        backend.close()
        raise
    report("ready", total, total)
    return Components(text_tokenizer, prompts, backend, speech_tokenizer, decoder, retriever)


def load_qwen_components(config: Config, progress: Progress | None = None,
                         on_warning: Callable[[str], None] | None = None) -> Components:
    """Qwen2.5-Omni: one checkpoint holds the audio encoder, thinker, talker and token2wav."""
    from voicechat.models import ensure_models
    from voicechat.qwen.voice_model import load_qwen

    if config.backend.kind != "local":
        raise VoicechatError("voice_model qwen2.5-omni runs in this process: set backend.kind to local")
    report = progress or (lambda step, done, total: None)
    total = 3
    report("checking models", 0, total)
    paths = ensure_models(config)
    report("voice model (Qwen2.5-Omni)", 1, total)
    speakers = {preset.speaker for preset in config.model_voices.values() if preset.speaker}
    parts = load_qwen(paths["omni"], config.models.omni, config.qwen, config.generation, speakers)
    report("retrieval", 2, total)
    retriever = load_retriever_or_warn(config, on_warning)
    report("ready", total, total)
    return Components(parts.text_tokenizer, parts.prompts, parts.backend, parts.speech_tokenizer,
                      parts.decoder, retriever)


def load_retriever_or_warn(config: Config, on_warning: Callable[[str], None] | None):
    """Without an index the conversation still works, without retrieval: say so and go on."""
    modes = retrieval_modes(config.retrieval.rag, config.retrieval.two_round)
    if not modes:
        return None
    from voicechat.retrieval.retriever import load_retriever

    try:
        return load_retriever(config, modes)
    except VoicechatError as error:
        if on_warning is None:
            raise
        on_warning(f"answering without retrieval: {error}")
        return None


def add_retrieval_modes(config: Config, parts: Components, modes: set[str]) -> None:
    """Load retrieval modes a conversation switched to (opening the index if none was open)."""
    from voicechat.retrieval.retriever import load_modes, load_retriever

    if parts.retriever is None:
        parts.retriever = load_retriever(config, modes)
    else:
        load_modes(parts.retriever, config, modes)
