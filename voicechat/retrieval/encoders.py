"""SONAR speech and text encoders, loaded through fairseq2 asset cards (a card name or a card
file; see ``voicechat.sonar_cards``). Both go through the same fairseq2 loaders. Encoders are loaded
once, warmed with one input, and return L2-normalised float32 vectors, so that inner product is
cosine similarity.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from voicechat.audio.resample import MODEL_RATE
from voicechat.cancellation import check, stop_between_layers, working_for
from voicechat.config import ModelSpec
from voicechat.placement import resolve_device, resolve_dtype
from voicechat.errors import AudioError, ModelError
from voicechat.retrieval.manifest import file_fingerprint
from voicechat.sonar_cards import card_file_path, is_card_file, load_card, read_card_file, sonar_model_status

# w2v-BERT accepts 4096 fbank frames (stride 2, 10 ms hop): about 82 s. Longer audio is split into
# equal segments no longer than this and their embeddings are averaged.
MAX_SPEECH_SEGMENT_S = 60.0


class SpeechEncoder(Protocol):
    dim: int

    def embed(self, audio_16k: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """16 kHz mono float32 samples -> (dim,) unit vector; raises voicechat.cancellation.Cancelled
        once ``cancel`` is set."""
        ...


class TextEncoder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str], langs: Sequence[str] | str,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Texts (one language each) -> (n, dim) unit vectors."""
        ...


def encoder_identity(spec: ModelSpec) -> dict[str, Any]:
    """What the index records about the text encoder, computed without importing torch: the
    source, the revision, and for card files a fingerprint of the checkpoint (its size and hashes
    of its first and last MiB), so that replaced weights are noticed."""
    identity: dict[str, Any] = {"source": spec.source, "revision": spec.revision}
    if is_card_file(spec.source):
        path = card_file_path(spec.source)
        metadata = read_card_file(path)
        checkpoint = Path(str(metadata.get("checkpoint", "")))
        if not checkpoint.is_absolute():
            checkpoint = path.parent / checkpoint
        identity["name"] = metadata["name"]
        identity["checkpoint"] = file_fingerprint(checkpoint) if checkpoint.is_file() else "missing"
    return identity


# --- devices --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    device: Any  # torch.device
    dtype: Any  # torch.dtype


def placement(spec: ModelSpec) -> Placement:
    import torch

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, gpu_default="float16")
    if device.type == "cpu" and dtype == torch.float16:
        raise ModelError(f"{spec.source}: float16 is not supported on the CPU; use float32 or bfloat16")
    return Placement(device, dtype)


# --- loading --------------------------------------------------------------------------------------


def _check_available(spec: ModelSpec, offline: bool) -> None:
    if offline and sonar_model_status(spec.source)[0] == "missing":
        raise ModelError(
            f"SONAR model {spec.source!r} is not in the fairseq2 cache and offline mode is on; "
            "run `voicechat models pull` while online, or point the config at a local card file"
        )


def _load_model(card, hub_loader: Callable[..., Any], spec: ModelSpec, where: Placement):
    from fairseq2.assets import AssetCardError, AssetDownloadError

    restrict = card.maybe_get_field("restrict")
    if restrict is not None and restrict.as_(bool) is False:  # would unpickle arbitrary objects
        raise ModelError(f"SONAR model {spec.source!r}: its card sets restrict: false; only weights-only "
                         "checkpoints are loaded")
    try:
        # mmap: the checkpoint is paged in while copied into the model, not held twice in memory
        return hub_loader(card, device=where.device, dtype=where.dtype, mmap=True)
    except AssetDownloadError as error:
        raise ModelError(f"cannot download SONAR model {spec.source!r} ({error}); check the network "
                         "or use --offline with a cached model") from None
    except (AssetCardError, FileNotFoundError) as error:
        raise ModelError(f"SONAR model {spec.source!r} cannot be loaded: {error}") from None
    except Exception as error:  # corrupt or mismatched checkpoints surface as many exception types
        raise ModelError(f"SONAR model {spec.source!r} cannot be loaded; its checkpoint is unreadable "
                         f"or does not match its card ({type(error).__name__}: {error})") from None


class SonarTextEncoder:
    """The SONAR text encoder and its NLLB tokenizer, e.g. ``text_sonar_basic_encoder``."""

    def __init__(self, pipeline: Any, dim: int, batch_size: int = 32) -> None:
        self._pipeline = pipeline
        self.dim = dim
        self.batch_size = batch_size

    @classmethod
    def load(cls, spec: ModelSpec, offline: bool = False, batch_size: int = 32) -> "SonarTextEncoder":
        _check_available(spec, offline)
        from fairseq2.data.tokenizers import load_tokenizer
        from fairseq2.models import load_model
        from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

        where = placement(spec)
        card = load_card(spec.source)
        model = _load_model(card, load_model, spec, where)
        try:
            tokenizer = load_tokenizer(card)
        except Exception as error:
            raise ModelError(f"the tokenizer of SONAR model {spec.source!r} cannot be loaded ({error})") from None
        pipeline = TextToEmbeddingModelPipeline(model, tokenizer, device=where.device, dtype=where.dtype)
        encoder = cls(pipeline, 0, batch_size)
        encoder.dim = int(encoder._raw(["warm up"], None).shape[1])  # the tokenizer's default language
        return encoder

    def embed(self, texts: Sequence[str], langs: Sequence[str] | str,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Batches hold texts of one language and similar length (fewer pad tokens)."""
        if isinstance(langs, str):
            langs = [langs] * len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: (langs[i], len(texts[i])))
        start = 0
        while start < len(order):
            lang = langs[order[start]]
            end = start
            while end < len(order) and end - start < self.batch_size and langs[order[end]] == lang:
                end += 1
            batch = order[start:end]
            out[batch] = self._raw([texts[i] for i in batch], lang)
            if progress:
                progress(len(batch))
            start = end
        return out

    def _raw(self, texts: list[str], lang: str | None) -> np.ndarray:
        vectors = self._pipeline.predict(texts, source_lang=lang, batch_size=len(texts))
        return _normalise(vectors.float().cpu().numpy())


class SonarSpeechEncoder:
    """A SONAR speech encoder, e.g. ``sonar_speech_encoder_eng``. Input is 16 kHz mono."""

    def __init__(self, pipeline: Any, dim: int) -> None:
        self._pipeline = pipeline
        self.dim = dim

    @classmethod
    def load(cls, spec: ModelSpec, offline: bool = False) -> "SonarSpeechEncoder":
        _check_available(spec, offline)
        from sonar.inference_pipelines.speech import SpeechToEmbeddingModelPipeline
        from sonar.models.sonar_speech import get_sonar_speech_encoder_hub

        where = placement(spec)
        card = load_card(spec.source)
        model = _load_model(card, get_sonar_speech_encoder_hub().load_model, spec, where)
        pipeline = SpeechToEmbeddingModelPipeline(model, device=where.device, fbank_dtype=where.dtype)
        stop_between_layers(pipeline.model)
        encoder = cls(pipeline, 0)
        encoder.dim = int(encoder.embed(np.zeros(MODEL_RATE, dtype=np.float32)).shape[0])
        return encoder

    def embed(self, audio_16k: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """Segments of long audio go through the encoder one at a time; ``cancel`` is checked
        before each segment and each layer (voicechat.cancellation.Cancelled once it is set)."""
        import torch

        audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio.size < MODEL_RATE // 10:  # the fbank front end needs a few frames
            audio = np.pad(audio, (0, MODEL_RATE // 10 - audio.size))
        # The front end standardises each mel bin over time: silence or a steady tone has zero
        # variance there and would give NaN. One int16 step of fixed-seed dither prevents that.
        dither = np.random.default_rng(0).standard_normal(audio.size).astype(np.float32)
        audio = audio + dither / 32768
        vectors = []
        with torch.inference_mode(), working_for(cancel):
            for segment in speech_segments(audio):
                check(cancel)
                tensor = torch.from_numpy(np.ascontiguousarray(segment)).unsqueeze(0)
                vectors.append(self._pipeline.predict([tensor], batch_size=1).float().cpu().numpy())
        vectors = _normalise(np.concatenate(vectors))
        if not np.isfinite(vectors).all():
            raise AudioError("the speech encoder could not embed this audio (it produced NaN); "
                             "check that the recording is not empty or clipped")
        return _normalise(vectors.mean(axis=0, keepdims=True))[0]


def speech_segments(audio: np.ndarray, max_s: float = MAX_SPEECH_SEGMENT_S) -> list[np.ndarray]:
    """Audio longer than the encoder accepts, as equal consecutive segments within the limit."""
    limit = int(max_s * MODEL_RATE)
    count = max(1, math.ceil(audio.size / limit))
    return [s for s in np.array_split(audio, count)]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
