"""Whisper speech recognition (transformers) for the asr retrieval mode.

The language is the configured one or Whisper's own detection; it is never forced to English. The
detected language is mapped to a SONAR language code for the text encoder.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.cancellation import check, stop_between_layers, working_for
from voicechat.config import ModelSpec
from voicechat.errors import ModelError
from voicechat.models import resolve_model

WINDOW_S = 30  # Whisper's input window

# Whisper language code -> SONAR (NLLB) language code
SONAR_LANGUAGES = {
    "en": "eng_Latn", "zh": "zho_Hans", "yue": "yue_Hant", "ja": "jpn_Jpan", "ko": "kor_Hang",
    "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "it": "ita_Latn", "pt": "por_Latn",
    "nl": "nld_Latn", "ru": "rus_Cyrl", "uk": "ukr_Cyrl", "pl": "pol_Latn", "cs": "ces_Latn",
    "sv": "swe_Latn", "da": "dan_Latn", "fi": "fin_Latn", "tr": "tur_Latn", "ar": "arb_Arab",
    "fa": "pes_Arab", "he": "heb_Hebr", "hi": "hin_Deva", "bn": "ben_Beng", "ta": "tam_Taml",
    "th": "tha_Thai", "vi": "vie_Latn", "id": "ind_Latn", "ms": "zsm_Latn", "el": "ell_Grek",
    "hu": "hun_Latn", "ro": "ron_Latn", "ca": "cat_Latn", "no": "nob_Latn",
}


def resolve_asr_model(config: Any) -> Path:
    return resolve_model("asr", config)


class WhisperTranscriber:
    max_new_tokens = 200  # per 30 s window; a trained model ends a question long before

    def __init__(self, model: Any, processor: Any, language: str | None, allowed: tuple[str, ...]) -> None:
        self._model = model
        self._processor = processor
        self.language = language
        self._allowed = allowed

    @classmethod
    def from_pretrained(cls, path: Path, spec: ModelSpec, language: str | None = None,
                        allowed: tuple[str, ...] = ()) -> "WhisperTranscriber":
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from voicechat.retrieval.encoders import placement

        where = placement(spec)
        try:
            processor = WhisperProcessor.from_pretrained(str(path))
            model = WhisperForConditionalGeneration.from_pretrained(str(path), dtype=where.dtype)
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"{path}: not a loadable Whisper model ({str(error).splitlines()[0]})") from None
        model = model.to(where.device).eval()
        stop_between_layers(model)
        transcriber = cls(model, processor, language, allowed)
        with torch.inference_mode():
            transcriber.transcribe(np.zeros(MODEL_RATE, dtype=np.float32))
        return transcriber

    def transcribe(self, audio_16k: np.ndarray, cancel: threading.Event | None = None) -> tuple[str, str | None]:
        """Window by window; ``cancel`` is checked before each window and each layer
        (voicechat.cancellation.Cancelled once it is set)."""
        import torch

        texts: list[str] = []
        detected: str | None = None
        step = WINDOW_S * MODEL_RATE
        for start in range(0, max(1, len(audio_16k)), step):
            check(cancel)
            window = audio_16k[start:start + step]
            features = self._processor.feature_extractor(
                window, sampling_rate=MODEL_RATE, return_tensors="pt").input_features
            features = features.to(self._model.device, self._model.dtype)
            with torch.inference_mode(), working_for(cancel):
                ids = self._model.generate(features, task="transcribe", language=self.language,
                                           max_new_tokens=self.max_new_tokens)
            tokens = self._processor.tokenizer.convert_ids_to_tokens(ids[0].tolist())
            detected = detected or _language_token(tokens)
            texts.append(self._processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
        code = self.language or detected
        return " ".join(t for t in texts if t), SONAR_LANGUAGES.get(code or "")


def _language_token(tokens: list[str]) -> str | None:
    for token in tokens[:4]:
        if token.startswith("<|") and token.endswith("|>") and token[2:-2] in SONAR_LANGUAGES:
            return token[2:-2]
    return None
