"""What Qwen2.5-Omni needs from the spoken question: its own audio encoder's output.

The 16 kHz audio goes through the Whisper feature extractor (128 mel bins) and the thinker's
audio tower, while retrieval runs; each output frame becomes one id of the prompt (AudioRows),
where transformers' processor would put one <|AUDIO|> token: ((n-1)//2+1-2)//2+1 of them for n
valid mel frames.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from voicechat.cancellation import check
from voicechat.errors import AudioError
from voicechat.qwen.generation import AudioRows

SAMPLE_RATE = 16000


def audio_token_count(mel_frames: int) -> int:
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


class QwenAudioInput:
    """In the engine's speech-tokenizer seat: audio in, prompt ids (rows of AudioRows) out."""

    def __init__(self, thinker, feature_extractor, rows: AudioRows) -> None:
        self.thinker = thinker
        self.features = feature_extractor
        self.rows = rows
        self.device = next(thinker.parameters()).device

    def tokenize(self, samples: np.ndarray, rate: int, cancel: threading.Event | None = None) -> list[int]:
        if rate != SAMPLE_RATE:
            raise AudioError(f"Qwen2.5-Omni's audio encoder needs {SAMPLE_RATE} Hz audio, got {rate} Hz")
        check(cancel)
        inputs = self.features(np.asarray(samples, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                               return_attention_mask=True, padding="max_length", return_tensors="pt")
        mask = inputs["attention_mask"]
        frames = int(mask.sum())
        if frames < 4:
            raise AudioError("the question is too short for Qwen2.5-Omni's audio encoder")
        check(cancel)
        tower = self.thinker.audio_tower
        features = inputs["input_features"].to(self.device, tower.dtype)
        with torch.inference_mode():
            embeddings = self.thinker.get_audio_features(features, feature_attention_mask=mask.to(self.device))
        check(cancel)
        expected = audio_token_count(frames)
        if embeddings.shape[0] != expected:
            raise AudioError(f"the audio encoder gave {embeddings.shape[0]} frames, expected {expected}")
        return self.rows.add(embeddings.float().cpu())
