"""Qwen2.5-Omni in the engine's seats: the tokenizer (text out, which reply ids are speech), the
prompt builder, the audio input (where GLM has its speech tokenizer), the thinker-and-talker
stream (where GLM has its language model backend) and the streaming token2wav (the decoder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicechat.config import GenerationConfig, ModelSpec, QwenConfig
from voicechat.errors import ModelError


@dataclass
class QwenParts:
    text_tokenizer: Any
    prompts: Any
    backend: Any
    speech_tokenizer: Any
    decoder: Any


def load_qwen(folder: Path, spec: ModelSpec, qwen: QwenConfig, generation: GenerationConfig,
              voice_speakers: set[str]) -> QwenParts:
    """``voice_speakers``: the speakers the voice presets name, each checked against the checkpoint."""
    from voicechat.qwen.checkpoint import load_omni

    loaded = load_omni(folder, spec.device, spec.dtype)
    unknown = sorted(voice_speakers - set(loaded.speakers))
    if unknown:
        raise ModelError(f"voice preset speaker {unknown[0]!r} is not in {folder.name}; it has: "
                         f"{', '.join(loaded.speakers)}")
    return qwen_parts(loaded.model, loaded.speakers, folder, qwen, generation)


def qwen_parts(model: Any, speakers: dict[str, dict[str, Any]], folder: Path, qwen: QwenConfig,
               generation: GenerationConfig) -> QwenParts:
    """The engine's seats around a loaded model; ``folder`` holds its tokenizer and preprocessor files."""
    from transformers import WhisperFeatureExtractor

    from voicechat.glm.prompt import PromptTemplates
    from voicechat.qwen.audio_input import QwenAudioInput
    from voicechat.qwen.checkpoint import DEFAULT_SPEAKER
    from voicechat.qwen.generation import AudioRows, OmniStream
    from voicechat.qwen.prompt import QwenPromptBuilder
    from voicechat.qwen.token2wav import StreamSettings, Token2Wav, Voice
    from voicechat.qwen.tokenizer import QwenTextTokenizer

    text_vocab = model.config.thinker_config.text_config.vocab_size
    codec_vocab = model.config.talker_config.vocab_size
    tokenizer = QwenTextTokenizer.from_pretrained(folder, audio_offset=text_vocab, audio_count=codec_vocab)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot read preprocessor_config.json ({str(error).splitlines()[0]})") from None
    voices = {name: Voice(entry["cond"], entry["ref_mel"]) for name, entry in speakers.items()}
    default = DEFAULT_SPEAKER if DEFAULT_SPEAKER in voices else next(iter(voices))
    settings = StreamSettings(first_chunk_blocks=qwen.first_chunk_blocks, chunk_blocks=qwen.chunk_blocks,
                              look_back=qwen.look_back_blocks, look_ahead=qwen.look_ahead_blocks)
    decoder = Token2Wav(model.token2wav, voices, default, settings, seed=qwen.seed)
    rows = AudioRows()
    backend = OmniStream(model, rows, codec_offset=text_vocab, stop_id=tokenizer.special.im_end,
                         talker_max_new_tokens=qwen.talker_max_new_tokens, voice_choice=decoder,
                         speakers=speakers, talker_temperature=qwen.talker_temperature)
    prompts = QwenPromptBuilder(tokenizer, PromptTemplates.from_config(generation))
    return QwenParts(tokenizer, prompts, backend, QwenAudioInput(model.thinker, extractor, rows), decoder)
