"""Random-weight GLM-4-Voice speech tokenizers in the published format: config.json, model.safetensors
(including the quantiser's ema_count and ema_weight buffers) and preprocessor_config.json.

"full" has the published architecture (343,599,360 parameters); "tiny" keeps everything that shapes
the token stream (128 mel bins, causal convolutions, block-causal attention, pooling 4, codebook of
16384) with small widths and two layers before the quantiser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from voicechat.glm.whisper_vq import WhisperVQConfig, WhisperVQEncoder

FOLDER = "glm-4-voice-tokenizer"

# The published config.json of THUDM/glm-4-voice-tokenizer.
FULL_CONFIG: dict = {
    "_name_or_path": "THUDM/glm-4-voice-tokenizer",
    "activation_dropout": 0.0,
    "activation_function": "gelu",
    "apply_spec_augment": False,
    "architectures": ["WhisperVQEncoder"],
    "attention_dropout": 0.0,
    "begin_suppress_tokens": [220, 50257],
    "bos_token_id": 50257,
    "classifier_proj_size": 256,
    "d_model": 1280,
    "decoder_attention_heads": 20,
    "decoder_ffn_dim": 5120,
    "decoder_layerdrop": 0.0,
    "decoder_layers": 32,
    "decoder_start_token_id": 50258,
    "dropout": 0.0,
    "encoder_attention_heads": 20,
    "encoder_causal_attention": False,
    "encoder_causal_convolution": True,
    "encoder_ffn_dim": 5120,
    "encoder_layerdrop": 0.0,
    "encoder_layers": 32,
    "eos_token_id": 50257,
    "init_std": 0.02,
    "is_encoder_decoder": True,
    "mask_feature_length": 10,
    "mask_feature_min_masks": 0,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_min_masks": 2,
    "mask_time_prob": 0.05,
    "max_length": 448,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "median_filter_width": 7,
    "model_type": "whisper",
    "num_hidden_layers": 32,
    "num_mel_bins": 128,
    "pad_token_id": 50256,
    "pooling_kernel_size": 4,
    "pooling_position": 16,
    "pooling_type": "avg",
    "quantize_causal_block_size": 200,
    "quantize_causal_encoder": False,
    "quantize_commit_coefficient": 0.25,
    "quantize_ema_decay": 0.99,
    "quantize_encoder_only": True,
    "quantize_loss_scale": 10.0,
    "quantize_position": 16,
    "quantize_restart_interval": 100,
    "quantize_vocab_size": 16384,
    "scale_embedding": False,
    "skip_language_detection": True,
    "torch_dtype": "float32",
    "transformers_version": "4.44.1",
    "use_cache": True,
    "use_weighted_layer_sum": False,
    "vocab_size": 51866,
}

TINY_CHANGES: dict = {
    "d_model": 64,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "encoder_layers": 4,
    "num_hidden_layers": 4,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 128,
    "decoder_layers": 2,
    "pooling_position": 2,
    "quantize_position": 2,
}

PREPROCESSOR_CONFIG: dict = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def write(out_dir: Path, size: str, seed: int) -> dict:
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder, config_for(size), seed)
    return {"models": {"speech_tokenizer": {"source": str(folder.resolve())}}}


def config_for(size: str) -> dict:
    return {**FULL_CONFIG, **(TINY_CHANGES if size == "tiny" else {})}


def build(size: str = "tiny", device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
          seed: int = 0, config: dict | None = None):
    """A SpeechTokenizer with random weights drawn directly on ``device`` (as ``write`` draws them),
    from ``config`` (a config.json mapping) or the published config of that size; nothing is written."""
    from transformers import WhisperFeatureExtractor

    from voicechat.glm.speech_tokenizer import SpeechTokenizer
    from voicechat.placement import resolve_device, resolve_dtype

    config = config or config_for(size)
    where = resolve_device(device)
    with torch.device("meta"):
        model = WhisperVQEncoder(WhisperVQConfig.from_dict(config))
    model.load_state_dict(random_state_dict(model.config, seed, where), strict=True, assign=True)
    model.to(dtype=resolve_dtype(dtype, where)).eval()
    model.codebook.float()  # as SpeechTokenizer.from_pretrained: the nearest-code search stays in float32
    extractor = WhisperFeatureExtractor(**{**PREPROCESSOR_CONFIG, "feature_size": config["num_mel_bins"]})
    return SpeechTokenizer(model, extractor)


def write_checkpoint(folder: Path, config: dict, seed: int) -> None:
    from safetensors.torch import save_file

    state = random_state_dict(WhisperVQConfig.from_dict(config), seed)
    _write_json(folder / "config.json", config)
    _write_json(folder / "preprocessor_config.json", {**PREPROCESSOR_CONFIG, "feature_size": config["num_mel_bins"]})
    part = folder / "model.safetensors.part"
    save_file(state, str(part), metadata={"format": "pt"})
    part.chmod(0o644)
    part.replace(folder / "model.safetensors")


def random_state_dict(config: WhisperVQConfig, seed: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the published layout, drawn so that the tokens follow the audio: unit-gain
    weights, sinusoidal positions (the reference's initialisation), non-trivial norms and biases, and
    a codebook spread around the states that synthetic speech produces at the quantiser (a codebook
    drawn blindly would let a handful of codes near the states' common offset win everywhere)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in WhisperVQEncoder(config).state_dict().items()}

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device) * std + mean

    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name == "embed_positions.weight":
            state[name] = sinusoids(*shape).to(generator.device)
        elif "layer_norm" in name:
            state[name] = normal(shape, 0.1, 1.0 if name.endswith("weight") else 0.0)
        elif name.endswith("bias"):
            state[name] = normal(shape, 0.05)
        elif name.startswith(("conv", "layers.")):  # convolution and projection weights
            state[name] = normal(shape, math.prod(shape[1:]) ** -0.5)
        else:  # codebook (drawn again below), second positions, quantiser statistics
            state[name] = normal(shape, 0.02)
    state["codebook.weight"] = _codebook_around_states(config, state, generator)
    if "ema_count" in shapes:
        state["ema_count"] = torch.ones(shapes["ema_count"], device=generator.device)
        state["ema_weight"] = state["codebook.weight"].clone()
    return state


def _codebook_around_states(config: WhisperVQConfig, state: dict[str, torch.Tensor],
                            generator: torch.Generator) -> torch.Tensor:
    """Codes drawn around the per-dimension mean of the quantiser's input for synthetic speech, a
    quarter of its spread away: the nearest code then depends on where a state deviates."""
    from transformers import WhisperFeatureExtractor

    with torch.device("meta"):
        model = WhisperVQEncoder(config)
    model.load_state_dict(state, strict=True, assign=True)
    extractor = WhisperFeatureExtractor(**{**PREPROCESSOR_CONFIG, "feature_size": config.num_mel_bins})
    audio = synthetic_speech(4.0, extractor.sampling_rate)
    features = extractor(audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
    frames = min(features.shape[-1], model.max_frames)
    where = generator.device
    with torch.inference_mode():
        states, _ = model.hidden_states(features[..., :frames].to(where), torch.ones(1, frames, dtype=torch.bool, device=where))
    states = states.reshape(-1, config.d_model)
    mean, spread = states.mean(dim=0), states.std(dim=0)
    return mean + 0.25 * spread * torch.randn(tuple(state["codebook.weight"].shape), generator=generator, device=where)


def synthetic_speech(seconds: float, rate: int) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of a gliding pitch in syllable-like bursts over a
    faint noise floor (recordings are never digitally silent)."""
    t = np.arange(int(seconds * rate)) / rate
    floor = 0.005 * np.random.default_rng(0).standard_normal(t.size)
    pitch = 130 + 40 * np.sin(2 * np.pi * 0.6 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    return (0.2 * voiced * syllables + floor).astype(np.float32)


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed positional encoding: sines then cosines over geometric timescales to 10^4."""
    half = channels // 2
    rates = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half))
    angles = torch.arange(length)[:, None] * rates[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
