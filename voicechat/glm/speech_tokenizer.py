"""Speech -> GLM-4-Voice speech tokens (12.5 per second), exactly as the reference tokenizer makes them.

The reference (extract_speech_token in the GLM-4-Voice repository), followed step by step here:

1. keep channel 0 and resample to 16 kHz;
2. cut the utterance into 30 s windows;
3. compute Whisper log-mel features for all windows of the utterance together, each zero-padded to
   the longest window rounded up to a whole token (1280 samples), with a mask of the real frames;
4. run the encoder and keep the tokens whose first frame is real audio: the frame mask downsampled
   by the conv strides and the pooling. Each window contributes ceil(samples / 1280) tokens.

Channel 0 rather than a mix: the language model was served tokens of channel 0 by the reference, and
a mix of two out-of-phase channels can cancel. Resampling is torchaudio's default sinc resampler,
as in the reference, so input at any rate gives the reference's tokens.

`tokenize` is the latency path for one utterance: its windows go through the encoder one at a time, and
a cancel event is checked before each window and each layer, so that a long recording stops at once
when the user cancels. `tokenize_batch` runs many utterances in batches of windows and gives the same
tokens as `tokenize` for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from voicechat.audio.resample import to_model_input
from voicechat.cancellation import check
from voicechat.errors import AudioError, ModelError
from voicechat.placement import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import threading

    import torch
    from transformers import WhisperFeatureExtractor

    from voicechat.glm.whisper_vq import WhisperVQEncoder

WINDOW_SECONDS = 30


@dataclass
class _Window:
    utterance: int
    features: torch.Tensor  # (n_mels, frames)
    frame_mask: torch.Tensor  # (frames,)


class SpeechTokenizer:
    """A loaded WhisperVQ tokenizer: audio in, token ids (0 … codebook size − 1) out."""

    def __init__(self, model: WhisperVQEncoder, feature_extractor: WhisperFeatureExtractor) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.samples_per_token = model.config.frames_per_token * int(feature_extractor.hop_length)
        self.window_samples = WINDOW_SECONDS * self.sample_rate
        if self.window_samples // int(feature_extractor.hop_length) > model.max_frames:
            raise ModelError(f"the encoder takes at most {model.max_frames} frames, less than one "
                             f"{WINDOW_SECONDS} s window")

    @classmethod
    def from_pretrained(cls, folder: Path, device: str = "auto", dtype: str = "auto") -> SpeechTokenizer:
        """Load a tokenizer folder (config.json, model.safetensors or pytorch_model.bin,
        preprocessor_config.json). ``dtype`` "auto" is float32: the tokens then match the reference."""
        from voicechat.glm.whisper_vq import load_encoder

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such speech tokenizer folder")
        model = load_encoder(folder)
        features = _feature_extractor(folder / "preprocessor_config.json", model.config.num_mel_bins)
        where = resolve_device(device)
        model.to(device=where, dtype=resolve_dtype(dtype, where))
        model.codebook.float()  # nearest-code search stays in float32 whatever the compute dtype
        return cls(model, features)

    @property
    def device(self) -> torch.device:
        return self.model.codebook.weight.device

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / self.samples_per_token

    def tokenize(self, samples: np.ndarray, rate: int, cancel: threading.Event | None = None) -> list[int]:
        """One utterance, (frames,) or (frames, channels), any rate -> its token ids. Raises
        voicechat.cancellation.Cancelled before a window or a layer once ``cancel`` is set."""
        tokens: list[int] = []
        for window in self._windows(0, self.prepare(samples, rate)):
            check(cancel)
            tokens += self._encode([window], cancel)[0]
        return tokens

    def tokenize_batch(self, utterances: Iterable[tuple[np.ndarray, int]], batch_windows: int = 8) -> list[list[int]]:
        """Many utterances (samples, rate) -> token ids for each, computing up to ``batch_windows``
        30 s windows per forward pass; the same tokens as `tokenize` one by one."""
        if batch_windows < 1:
            raise ValueError("batch_windows must be at least 1")
        return self._run([self.prepare(samples, rate) for samples, rate in utterances], batch_windows)

    def warm_up(self) -> None:
        """One short pass so that the first real utterance does not pay for lazy set-up."""
        noise = np.random.default_rng(0).normal(0.0, 0.01, self.sample_rate).astype(np.float32)
        self.tokenize(noise, self.sample_rate)

    def prepare(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """Channel 0, resampled to the model rate, float32; rejects what cannot be audio."""
        samples = np.asarray(samples)
        if samples.ndim == 2 and samples.shape[1] > 0:
            samples = samples[:, 0]
        if samples.ndim != 1 or not (np.issubdtype(samples.dtype, np.floating) or samples.dtype == np.int16):
            raise AudioError(f"expected 16-bit or float audio shaped (frames,) or (frames, channels), got "
                             f"{samples.dtype} {samples.shape}")
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioError(f"invalid sample rate {rate!r}")
        audio = to_model_input(samples, int(rate), self.sample_rate)
        if not np.isfinite(audio).all():
            raise AudioError("the audio contains NaN or infinite samples")
        return audio

    # --- internals ------------------------------------------------------------------------------

    def _run(self, utterances: Sequence[np.ndarray], batch_windows: int) -> list[list[int]]:
        windows = [w for index, audio in enumerate(utterances) for w in self._windows(index, audio)]
        tokens: list[list[int]] = [[] for _ in utterances]
        if not windows:
            return tokens
        # Shortest first so that a batch pads little; results are put back in order.
        order = sorted(range(len(windows)), key=lambda i: windows[i].frame_mask.shape[0])
        results: dict[int, list[int]] = {}
        for start in range(0, len(order), batch_windows):
            chosen = order[start : start + batch_windows]
            for index, ids in zip(chosen, self._encode([windows[i] for i in chosen])):
                results[index] = ids
        for index, window in enumerate(windows):
            tokens[window.utterance].extend(results[index])
        return tokens

    def _windows(self, utterance: int, audio: np.ndarray) -> Iterator[_Window]:
        """Features of one utterance's 30 s windows, one window at a time, each padded as the
        reference pads them together: to the longest (the first) rounded up to a whole token.
        Audio shorter than one token (80 ms) is no utterance: no tokens, where the reference would
        make one token of it."""
        if audio.size < self.samples_per_token:
            return
        longest = min(audio.size, self.window_samples)
        padded = math.ceil(longest / self.samples_per_token) * self.samples_per_token
        for start in range(0, audio.size, self.window_samples):
            extracted = self.feature_extractor(
                [audio[start : start + self.window_samples]],
                sampling_rate=self.sample_rate,
                padding="max_length",
                max_length=padded,
                return_attention_mask=True,
                return_tensors="pt",
                device=self.device.type if self.device.type == "cuda" else "cpu",
            )
            yield _Window(utterance, extracted["input_features"][0], extracted["attention_mask"][0])

    def _encode(self, windows: list[_Window], cancel: threading.Event | None = None) -> list[list[int]]:
        """One forward pass; windows of different lengths are zero-padded at the end, which leaves
        each window's kept tokens unchanged (padding starts on a token boundary and is masked)."""
        import torch

        frames = max(w.frame_mask.shape[0] for w in windows)
        features = torch.zeros(len(windows), windows[0].features.shape[0], frames)
        mask = torch.zeros(len(windows), frames, dtype=torch.bool)
        for row, window in enumerate(windows):
            features[row, :, : window.features.shape[1]] = window.features
            mask[row, : window.frame_mask.shape[0]] = window.frame_mask.bool()
        with torch.inference_mode():
            ids, keep = self.model(features.to(self.device), mask.to(self.device), cancel)
        ids, keep = ids.cpu(), keep.cpu()
        return [ids[row][keep[row]].tolist() for row in range(len(windows))]


def _feature_extractor(path: Path, mel_bins: int) -> WhisperFeatureExtractor:
    from transformers import WhisperFeatureExtractor

    from voicechat.glm.whisper_vq import read_json_object

    settings = read_json_object(path)
    try:
        extractor = WhisperFeatureExtractor(**settings)
    except (TypeError, ValueError) as error:
        raise ModelError(f"{path}: invalid feature extractor settings ({error})") from None
    if extractor.feature_size != mel_bins:
        raise ModelError(f"{path}: feature_size {extractor.feature_size} does not match the model's "
                         f"num_mel_bins {mel_bins}")
    return extractor
