"""Load the published ChatGLM-format checkpoint into transformers' native GlmForCausalLM.

GLM-4-Voice-9B ships remote code for an old transformers; its weights are plain GLM-4. The
names are mapped and the fused attention projection is split while each shard is read, tensor by
tensor, so peak memory stays near the size of the model. Every name and shape must match:
anything missing, extra or misshapen is a ModelError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from voicechat.errors import ModelError
from voicechat.placement import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch
    from transformers import GlmConfig, GlmForCausalLM

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# ChatGLM name -> Glm name; {n} is the layer. The fused query_key_value is split (see below) and
# dense_h_to_4h is already [gate; up], the layout of Glm's gate_up_proj.
NAME_MAP: dict[str, str] = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.layers.{n}.input_layernorm.weight": "model.layers.{n}.input_layernorm.weight",
    "transformer.encoder.layers.{n}.self_attention.dense.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "transformer.encoder.layers.{n}.post_attention_layernorm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "transformer.encoder.layers.{n}.mlp.dense_h_to_4h.weight": "model.layers.{n}.mlp.gate_up_proj.weight",
    "transformer.encoder.layers.{n}.mlp.dense_4h_to_h.weight": "model.layers.{n}.mlp.down_proj.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
FUSED_QKV = "transformer.encoder.layers.{n}.self_attention.query_key_value.{kind}"
SPLIT_QKV = ("model.layers.{n}.self_attn.q_proj.{kind}", "model.layers.{n}.self_attn.k_proj.{kind}",
             "model.layers.{n}.self_attn.v_proj.{kind}")
ROTARY_BUFFER = "transformer.rotary_pos_emb.inv_freq"

_LAYER = re.compile(r"\.layers\.(\d+)\.")


# --- config -----------------------------------------------------------------------------------


def read_chatglm_config(path: Path) -> dict[str, Any]:
    file = Path(path) / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelError(f"cannot read {file} ({error.strerror or error}); is this the GLM-4-Voice-9B folder?") from None
    except ValueError:
        raise ModelError(f"{file} is not valid JSON") from None
    if not isinstance(config, dict) or config.get("model_type") != "chatglm":
        raise ModelError(f"{file} does not describe a ChatGLM model (model_type 'chatglm' expected)")
    return config


def glm_config(chatglm: dict[str, Any]) -> GlmConfig:
    """The native GlmConfig for a ChatGLM config.json; variants Glm cannot express are refused."""
    from transformers import GlmConfig

    required = {"rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False,
                "apply_residual_connection_post_layernorm": False, "original_rope": True}
    for key, value in required.items():
        if chatglm.get(key, value) != value:
            raise ModelError(f"config.json has {key}={chatglm.get(key)!r}; only the GLM-4 layout ({key}={value}) is supported")
    try:
        heads = int(chatglm["num_attention_heads"])
        groups = int(chatglm["multi_query_group_num"]) if chatglm.get("multi_query_attention") else heads
        eos = chatglm.get("eos_token_id")
        return GlmConfig(
            vocab_size=int(chatglm["padded_vocab_size"]),
            hidden_size=int(chatglm["hidden_size"]),
            intermediate_size=int(chatglm["ffn_hidden_size"]),
            num_hidden_layers=int(chatglm["num_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=groups,
            head_dim=int(chatglm["kv_channels"]),
            partial_rotary_factor=0.5,  # ChatGLM rotates the first half of each head
            rms_norm_eps=float(chatglm["layernorm_epsilon"]),
            rope_theta=10000.0 * float(chatglm.get("rope_ratio", 1)),
            attention_bias=bool(chatglm.get("add_qkv_bias", True)),
            max_position_embeddings=int(chatglm.get("seq_length", 131072)),
            pad_token_id=chatglm.get("pad_token_id"),
            eos_token_id=eos,
            tie_word_embeddings=False,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"config.json lacks or has an invalid field {error}; is this GLM-4-Voice-9B?") from None


def rope_settings(config: GlmConfig) -> tuple[float, float]:
    """(rope theta, rotated fraction of each head). transformers 5 keeps both in
    ``config.rope_parameters``; 4.x keeps them as attributes."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    fraction = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return float(theta), float(fraction)


def expected_shapes(config: GlmConfig) -> dict[str, tuple[int, ...]]:
    """Every ChatGLM checkpoint name with its shape, derived from the config."""
    hidden, heads, groups, head_dim = (config.hidden_size, config.num_attention_heads,
                                       config.num_key_value_heads, config.head_dim)
    qkv = (heads + 2 * groups) * head_dim
    shapes = {
        "transformer.embedding.word_embeddings.weight": (config.vocab_size, hidden),
        ROTARY_BUFFER: (int(head_dim * rope_settings(config)[1]) // 2,),
        "transformer.encoder.final_layernorm.weight": (hidden,),
        "transformer.output_layer.weight": (config.vocab_size, hidden),
    }
    for n in range(config.num_hidden_layers):
        layer = f"transformer.encoder.layers.{n}."
        shapes.update({
            layer + "input_layernorm.weight": (hidden,),
            layer + "self_attention.query_key_value.weight": (qkv, hidden),
            layer + "self_attention.query_key_value.bias": (qkv,),
            layer + "self_attention.dense.weight": (hidden, heads * head_dim),
            layer + "post_attention_layernorm.weight": (hidden,),
            layer + "mlp.dense_h_to_4h.weight": (2 * config.intermediate_size, hidden),
            layer + "mlp.dense_4h_to_h.weight": (hidden, config.intermediate_size),
        })
    return shapes


# --- names --------------------------------------------------------------------------------------


def convert_tensor(name: str, tensor: torch.Tensor, config: GlmConfig) -> list[tuple[str, torch.Tensor]]:
    """One ChatGLM tensor as the Glm tensor(s) it becomes: [q | k | v] rows of the fused
    projection go to q_proj, k_proj and v_proj."""
    match = _LAYER.search(name)
    n = match.group(1) if match else None
    generic = _LAYER.sub(".layers.{n}.", name)
    for kind in ("weight", "bias"):
        if generic == FUSED_QKV.format(n="{n}", kind=kind):
            q = config.num_attention_heads * config.head_dim
            kv = config.num_key_value_heads * config.head_dim
            parts = tensor.split([q, kv, kv], dim=0)
            return [(target.format(n=n, kind=kind), part) for target, part in zip(SPLIT_QKV, parts)]
    if generic in NAME_MAP:
        return [(NAME_MAP[generic].format(n=n), tensor)]
    raise ModelError(f"unexpected tensor {name!r} in the checkpoint; is this GLM-4-Voice-9B?")


# --- files --------------------------------------------------------------------------------------


def shard_files(path: Path) -> list[Path]:
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index} is unreadable or has no weight_map") from None
    elif (path / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise ModelError(f"no safetensors weights in {path} (expected {INDEX_FILE} or {SINGLE_FILE})")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise ModelError(f"the checkpoint in {path} is incomplete: {missing[0]} is missing")
    return [path / f for f in files]


def iter_checkpoint(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over all shards, one tensor in memory at a time."""
    from safetensors import SafetensorError, safe_open

    for file in shard_files(path):
        try:
            with safe_open(str(file), framework="pt") as shard:
                for name in shard.keys():
                    yield name, shard.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise ModelError(f"cannot read {file.name} ({error}); the download may be corrupt") from None


# --- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedLM:
    model: GlmForCausalLM
    device: torch.device
    dtype: torch.dtype


def load_glm(path: Path, device: str = "auto", dtype: str = "auto", quantization: str = "none") -> LoadedLM:
    """GlmForCausalLM with the checkpoint's weights, in eval mode.

    device "auto" is the first GPU if there is one, else the CPU; dtype "auto" is bfloat16 on a
    GPU and float32 on the CPU; quantization "4bit" (NF4 through bitsandbytes) needs a GPU.
    """
    config = glm_config(read_chatglm_config(path))
    return build_glm(config, iter_checkpoint(path), device, dtype, quantization, source=f"the checkpoint in {path}")


def build_glm(config: GlmConfig, tensors: Iterable[tuple[str, torch.Tensor]], device: str | torch.device = "auto",
              dtype: str | torch.dtype = "auto", quantization: str = "none", source: str = "the checkpoint") -> LoadedLM:
    """GlmForCausalLM from (ChatGLM name, tensor) pairs: built on the meta device, then each tensor is
    checked, converted and placed on the target device one at a time."""
    import torch
    from transformers import GlmForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, gpu_default="bfloat16")
    quantize = _quantizer(quantization, torch_device)
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    model.eval()
    expected = expected_shapes(config)
    seen: set[str] = set()
    for name, tensor in tensors:
        _check(name, tensor, expected, seen)
        if name == ROTARY_BUFFER:
            _check_rotary(tensor, config)
            continue
        for target, part in convert_tensor(name, tensor, config):
            _place(model, target, part.to(device=torch_device, dtype=torch_dtype), quantize)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ModelError(f"{source} lacks {len(missing)} tensors, e.g. {missing[0]}; it is incomplete")
    _rebuild_rotary(model, config, torch_device)
    return LoadedLM(model, torch_device, torch_dtype)


def _check(name: str, tensor: torch.Tensor, expected: dict[str, tuple[int, ...]], seen: set[str]) -> None:
    if name not in expected:
        raise ModelError(f"unexpected tensor {name!r} in the checkpoint; it does not match config.json")
    if tuple(tensor.shape) != expected[name]:
        raise ModelError(f"tensor {name} has shape {list(tensor.shape)}, config.json implies {list(expected[name])}")
    if name in seen:
        raise ModelError(f"tensor {name} appears twice in the checkpoint")
    seen.add(name)


def _check_rotary(inv_freq: torch.Tensor, config: GlmConfig) -> None:
    """The stored rotary frequencies must be the ones the config's rope settings give."""
    import torch

    theta, fraction = rope_settings(config)
    rotary = int(config.head_dim * fraction)
    ours = 1.0 / (theta ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
    if not torch.allclose(inv_freq.float().cpu(), ours, rtol=1e-2, atol=1e-6):
        raise ModelError("the checkpoint's rotary frequencies do not match its rope settings in config.json")


def _place(model: torch.nn.Module, name: str, tensor: torch.Tensor,
           quantize: Callable[[torch.nn.Module, str, torch.Tensor], bool] | None) -> None:
    import torch

    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if quantize is not None and quantize(model, name, tensor):
        return
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))


def _rebuild_rotary(model: GlmForCausalLM, config: GlmConfig, device: torch.device) -> None:
    """The rotary buffers were created on the meta device; compute them for real."""
    import torch
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    with torch.device(device):  # the `device` argument is deprecated in transformers 5
        model.model.rotary_emb = GlmRotaryEmbedding(config)
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if leftover:
        raise ModelError(f"the checkpoint did not provide {leftover[0]}")


def _quantizer(quantization: str, device: torch.device) -> Callable[[Any, str, Any], bool] | None:
    """4-bit NF4 weights for the decoder layers' linear projections (as the reference server's
    int4 mode); embeddings, norms and the output layer stay in the model dtype."""
    if quantization == "none":
        return None
    if device.type != "cuda":
        raise ModelError("4-bit quantization needs a CUDA GPU; set models.lm.quantization: none to run on the CPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ModelError("4-bit quantization needs the bitsandbytes package: pip install bitsandbytes") from None
    import torch

    def quantize(model: Any, name: str, tensor: Any) -> bool:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if ".layers." not in name or not isinstance(module, torch.nn.Linear) or attr != "weight":
            return False
        replacement = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                        compute_dtype=tensor.dtype, quant_type="nf4", device="meta")
        replacement.weight = bnb.nn.Params4bit(tensor.to("cpu"), requires_grad=False, quant_type="nf4").to(device)
        if module.bias is not None:
            replacement.bias = module.bias
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)
        return True

    return quantize
