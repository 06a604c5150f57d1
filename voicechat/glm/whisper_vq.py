"""WhisperVQ: the Whisper encoder with a vector quantiser that turns speech into GLM-4-Voice tokens.

The published tokenizer (THUDM/glm-4-voice-tokenizer, architecture "WhisperVQEncoder") computes:

    log-mel (B, n_mels, frames)
      -> conv1 (kernel 3, stride 1) -> GELU -> conv2 (kernel 3, stride 2) -> GELU
         (causal convolutions pad two frames on the left only)
      -> + positional embedding (Whisper's sinusoids in the published weights)
      -> pre-norm transformer layers; a frame attends to every earlier frame and to the whole of its
         block (block-causal), never to padding
      -> average pooling (kernel 4) after layer `pooling_position`, block size divided by 4
      -> after layer `quantize_position`: index of the nearest codebook vector (squared L2)

Parameter names are the checkpoint's, so the published weights load with strict checking.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voicechat.cancellation import check
from voicechat.errors import ModelError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperVQConfig:
    """The fields of the checkpoint's config.json that shape the encoder (defaults as upstream)."""

    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    num_mel_bins: int = 80
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    encoder_causal_convolution: bool = False
    encoder_causal_attention: bool = False
    pooling_kernel_size: int | None = None
    pooling_type: str = "max"
    pooling_position: int = 0
    quantize_vocab_size: int | None = None
    quantize_position: int = 16
    quantize_encoder_only: bool = False
    quantize_causal_encoder: bool = False
    quantize_causal_block_size: int | None = None
    quantize_ema_decay: float | None = None

    @classmethod
    def from_file(cls, path: Path) -> WhisperVQConfig:
        return cls.from_dict(read_json_object(path), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> WhisperVQConfig:
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.name in data:
                values[spec.name] = _checked_value(spec, data[spec.name], source)
        config = cls(**values)
        config._validate(source)
        return config

    def _validate(self, source: str) -> None:
        problem = None
        sizes = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
                 "max_source_positions", "quantize_vocab_size", "pooling_kernel_size", "quantize_causal_block_size")
        zero = [name for name in sizes if getattr(self, name) == 0]
        if zero:
            problem = f"{zero[0]} must be at least 1"
        elif self.quantize_vocab_size is None:
            problem = "quantize_vocab_size is not set: this is a plain Whisper model, not a speech tokenizer"
        elif not 1 <= self.quantize_position <= self.encoder_layers:
            problem = f"quantize_position {self.quantize_position} is outside 1-{self.encoder_layers}"
        elif self.d_model % self.encoder_attention_heads:
            problem = "d_model is not divisible by encoder_attention_heads"
        elif self.activation_function not in ACTIVATIONS:
            problem = f"unsupported activation_function {self.activation_function!r}"
        elif self.pooling_kernel_size is not None:
            if self.pooling_type not in ("avg", "max"):
                problem = f"unsupported pooling_type {self.pooling_type!r}"
            elif not 1 <= self.pooling_position <= self.quantize_position:
                problem = f"pooling_position {self.pooling_position} is outside 1-{self.quantize_position}"
            elif self.quantize_causal_block_size and self.quantize_causal_block_size < self.pooling_kernel_size:
                problem = "quantize_causal_block_size is smaller than pooling_kernel_size"
        if problem:
            raise ModelError(f"{source}: {problem}")

    @property
    def causal_attention(self) -> bool:
        """Every layer before the quantiser is plainly causal (the published model: no)."""
        return self.encoder_causal_attention or self.quantize_causal_encoder

    @property
    def pooling(self) -> int:
        return self.pooling_kernel_size or 1

    @property
    def frames_per_token(self) -> int:
        """Feature frames per token: conv2's stride times the pooling kernel."""
        return 2 * self.pooling


def _checked_value(spec: dataclasses.Field, value: Any, source: str) -> Any:
    expected = str(spec.type)
    ok = (
        (value is None and "None" in expected)
        or ("bool" in expected and isinstance(value, bool))
        or ("int" in expected and isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        or ("float" in expected and isinstance(value, (int, float)) and not isinstance(value, bool))
        or ("str" in expected and isinstance(value, str))
    )
    if not ok:
        raise ModelError(f"{source}: {spec.name}: expected {expected.replace(' | ', ' or ')}, got {value!r}")
    return value


# --- blocks ---------------------------------------------------------------------------------------


class FrameConv(nn.Conv1d):
    """Kernel-3 convolution over frames; a causal one sees only the current and two earlier inputs."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, causal: bool) -> None:
        super().__init__(channels_in, channels_out, kernel_size=3, stride=stride, padding=0 if causal else 1)
        self.left_padding = 2 if causal else 0

    def forward(self, x: Tensor) -> Tensor:
        if self.left_padding:
            x = F.pad(x, (self.left_padding, 0))
        return super().forward(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        batch, length, dim = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and length > 1)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    def __init__(self, config: WhisperVQConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.self_attn = SelfAttention(dim, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = ACTIVATIONS[config.activation_function]

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask, causal)
        x = x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as the reference: keep overflow finite in half precision
            limit = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-limit, limit)
        return x


# --- the model ------------------------------------------------------------------------------------


class WhisperVQEncoder(nn.Module):
    """Log-mel features -> speech token ids. Module names follow the published checkpoint."""

    def __init__(self, config: WhisperVQConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.d_model
        causal_conv = config.encoder_causal_convolution
        self.conv1 = FrameConv(config.num_mel_bins, dim, stride=1, causal=causal_conv)
        self.conv2 = FrameConv(dim, dim, stride=2, causal=causal_conv)
        self.embed_positions = nn.Embedding(config.max_source_positions, dim)
        # An encoder-only checkpoint stops at the quantiser; a full one also carries the later layers
        # and the final norm, which play no part in the tokens.
        built = config.quantize_position if config.quantize_encoder_only else config.encoder_layers
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(built))
        if not config.quantize_encoder_only:
            self.layer_norm = nn.LayerNorm(dim)
        assert config.quantize_vocab_size is not None
        self.codebook = nn.Embedding(config.quantize_vocab_size, dim)
        self.embed_positions2 = nn.Embedding(math.ceil(config.max_source_positions / config.pooling), dim)
        if config.quantize_ema_decay is not None:
            # the quantiser's training statistics: part of the published file, unused here
            self.register_buffer("ema_count", torch.ones(config.quantize_vocab_size))
            self.register_buffer("ema_weight", torch.zeros(config.quantize_vocab_size, dim))
        self._block_masks: dict[tuple[int, torch.device], Tensor] = {}
        self._norms_key: tuple | None = None
        self._norms = torch.empty(0)

    @property
    def max_frames(self) -> int:
        """Feature frames one forward pass can take (3000 = 30 s for the published model)."""
        return self.config.max_source_positions * 2

    def forward(self, features: Tensor, frame_mask: Tensor,
                cancel: threading.Event | None = None) -> tuple[Tensor, Tensor]:
        """(B, n_mels, frames) features and (B, frames) mask of real frames -> (B, tokens) ids and
        the (B, tokens) mask of tokens that start on real audio (the reference keeps only those).
        Raises Cancelled before a layer once ``cancel`` is set."""
        states, valid = self.hidden_states(features, frame_mask, cancel)
        return self.nearest_codes(states), valid

    def hidden_states(self, features: Tensor, frame_mask: Tensor,
                      cancel: threading.Event | None = None) -> tuple[Tensor, Tensor]:
        """The (B, tokens, D) states that enter the quantiser, and the mask of real tokens."""
        config = self.config
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]]
        valid = frame_mask[:, :: self.conv1.stride[0] * self.conv2.stride[0]].bool()
        block = config.quantize_causal_block_size
        mask = self._attention_mask(valid, block)
        for number, layer in enumerate(self.layers[: config.quantize_position], start=1):
            check(cancel)
            x = layer(x, mask, config.causal_attention)
            if number == config.pooling_position and config.pooling_kernel_size:
                x = self._pool(x)
                valid = valid[:, :: config.pooling_kernel_size]
                block = block // config.pooling_kernel_size if block else None
                mask = self._attention_mask(valid, block)
        return x, valid

    def nearest_codes(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T) index of the nearest codebook vector, computed in float32 with the
        reference's expansion |c|² + |x|² − 2·x·c so that near-ties resolve the same way."""
        flat = x.reshape(-1, x.shape[-1]).float()
        codebook = self.codebook.weight.float()
        squares = self._codebook_norms() + (flat**2).sum(dim=1, keepdim=True)
        distances = torch.addmm(squares, flat, codebook.t(), beta=1.0, alpha=-2.0)
        return distances.argmin(dim=1).view(x.shape[:-1])

    def _codebook_norms(self) -> Tensor:
        """|c|² per code, recomputed only when the codebook tensor changes (it is 21M values)."""
        weight = self.codebook.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if self._norms_key != key:
            self._norms = (weight.float() ** 2).sum(dim=1)
            self._norms_key = key
        return self._norms

    def quantized_states(self, token_ids: Tensor) -> Tensor:
        """(B, T) ids -> the encoder's output after the quantiser: codebook vectors plus the second
        (pooled-rate) positional embedding, as the reference hands them to any later layer."""
        return self.codebook(token_ids) + self.embed_positions2.weight[: token_ids.shape[1]]

    def _pool(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, ceil(T / k), D); a ragged end is padded with zeros first."""
        kernel = self.config.pooling
        x = x.transpose(1, 2)
        if x.shape[-1] % kernel:
            x = F.pad(x, (0, kernel - x.shape[-1] % kernel))
        pool = F.avg_pool1d if self.config.pooling_type == "avg" else F.max_pool1d
        return pool(x, kernel).transpose(1, 2)

    def _attention_mask(self, valid: Tensor, block: int | None) -> Tensor | None:
        """Boolean mask (True = may attend) broadcastable to (B, heads, T, T); None when every
        position may attend to every other (or the layers are plainly causal)."""
        if self.config.causal_attention:
            return None  # the reference ignores padding here: causal queries never reach it anyway
        length = valid.shape[1]
        all_valid = bool(valid.all())
        if block is None:
            return None if all_valid else valid[:, None, None, :]
        allowed = self._block_causal(block, valid.device)[:length, :length]
        return allowed if all_valid else allowed & valid[:, None, None, :]

    def _block_causal(self, block: int, device: torch.device) -> Tensor:
        """(max_positions, max_positions) mask: earlier frames plus the frame's whole block. Built
        once per block size and device; shorter inputs use its top-left corner."""
        key = (block, device)
        if key not in self._block_masks:
            index = torch.arange(self.config.max_source_positions, device=device)
            self._block_masks[key] = (index[None, :] <= index[:, None]) | (
                index[None, :] // block == index[:, None] // block
            )
        return self._block_masks[key]


# --- loading --------------------------------------------------------------------------------------


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: no {' or '.join(WEIGHT_FILES)} found; is this a speech tokenizer folder?")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from a safetensors file or a pickled state dict (loaded with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader failure means the same thing to the user
        raise ModelError(f"{path}: cannot read the weights ({_first_line(error)}); the file may be "
                         "incomplete or corrupt, download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def load_encoder(folder: Path) -> WhisperVQEncoder:
    """Build from config.json and load the weights with strict name and shape checking (fp32, CPU)."""
    config = WhisperVQConfig.from_file(folder / "config.json")
    path = weights_file(folder)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = WhisperVQEncoder(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_state_dict(state, expected, path)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def check_state_dict(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise ModelError(f"{path}: weights do not match config.json ({'; '.join(parts)})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ModelError(f"{path}: {name} has shape {list(state[name].shape)}, config.json implies "
                             f"{list(shape)}")


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_json_object(path: Path) -> dict:
    """A speech tokenizer folder's JSON file (config.json, preprocessor_config.json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; a speech tokenizer folder needs its {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data
