"""The ChatGLM checkpoint loads into transformers' GlmForCausalLM and computes what ChatGLM does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from voicechat.errors import ModelError
from voicechat.glm.lm.checkpoint import iter_checkpoint, load_glm, read_chatglm_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def chatglm_forward(weights: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """GLM-4 written from the ChatGLM equations on the original tensors: RMSNorm, fused QKV with
    bias, grouped-query attention, rotary on the first half of each head with interleaved pairs,
    SwiGLU over the [gate; up] rows of dense_h_to_4h, separate output layer."""
    w = {k: v.float() for k, v in weights.items()}
    eps = config["layernorm_epsilon"]
    heads, groups, head_dim = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    seq = ids.shape[0]

    def rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    rot = head_dim // 2
    base = 10000.0 * config["rope_ratio"]
    inv_freq = 1.0 / base ** (torch.arange(0, rot, 2).float() / rot)
    angles = torch.outer(torch.arange(seq).float(), inv_freq)  # (seq, rot/2)
    cos, sin = angles.cos(), angles.sin()

    def rotary(x: torch.Tensor) -> torch.Tensor:  # (heads, seq, head_dim)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
        return torch.cat([turned.flatten(-2), x_pass], dim=-1)

    h = w["transformer.embedding.word_embeddings.weight"][ids]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        x = rmsnorm(h, w[p + "input_layernorm.weight"])
        qkv = x @ w[p + "self_attention.query_key_value.weight"].T + w[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = rotary(q.view(seq, heads, head_dim).transpose(0, 1))
        k = rotary(k.view(seq, groups, head_dim).transpose(0, 1))
        v = v.view(seq, groups, head_dim).transpose(0, 1)
        k = k.repeat_interleave(heads // groups, dim=0)
        v = v.repeat_interleave(heads // groups, dim=0)
        scores = q @ k.transpose(-1, -2) / head_dim**0.5 + mask
        context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(seq, heads * head_dim)
        h = h + context @ w[p + "self_attention.dense.weight"].T
        x = rmsnorm(h, w[p + "post_attention_layernorm.weight"])
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (F.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = rmsnorm(h, w["transformer.encoder.final_layernorm.weight"])
    return h @ w["transformer.output_layer.weight"].T


def test_converted_native_model_gives_the_chatglm_logits(tiny_lm: Path) -> None:
    config = read_chatglm_config(tiny_lm)
    weights = dict(iter_checkpoint(tiny_lm))
    ids = torch.randint(0, config["padded_vocab_size"], (23,), generator=torch.Generator().manual_seed(1))
    loaded = load_glm(tiny_lm, device="cpu", dtype="float32")
    with torch.no_grad():
        ours = loaded.model(ids[None]).logits[0]
    reference = chatglm_forward(weights, config, ids)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_incremental_decoding_with_cache_matches_full_forward(tiny_lm: Path) -> None:
    from transformers import DynamicCache

    loaded = load_glm(tiny_lm, device="cpu", dtype="float32")
    ids = torch.arange(100, 130)[None]
    with torch.no_grad():
        full = loaded.model(ids).logits[0, -1]
        cache = DynamicCache()
        loaded.model(ids[:, :20], past_key_values=cache, use_cache=True)
        step = loaded.model(ids[:, 20:], past_key_values=cache, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_lm, tmp_path / "lm")
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelError, match="incomplete"):
        load_glm(folder, device="cpu")


def test_shape_mismatch_between_config_and_weights_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_lm, tmp_path / "lm")
    config = json.loads((folder / "config.json").read_text())
    config["ffn_hidden_size"] += 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="shape"):
        load_glm(folder, device="cpu")


def test_extra_tensor_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = copy_checkpoint(tiny_lm, tmp_path / "lm")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    save_file({"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2)}, str(folder / "extra.safetensors"))
    index["weight_map"]["transformer.prefix_encoder.embedding.weight"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="unexpected tensor"):
        load_glm(folder, device="cpu")


def test_corrupt_shard_is_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_lm, tmp_path / "lm")
    shard = next(folder.glob("model-00001-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ModelError):
        load_glm(folder, device="cpu")


def test_four_bit_without_a_gpu_is_a_clear_error(tiny_lm: Path) -> None:
    with pytest.raises(ModelError, match="4-bit"):
        load_glm(tiny_lm, device="cpu", quantization="4bit")


def test_full_size_checkpoint_names_and_shapes_are_the_published_ones() -> None:
    keys = SHARED / "reference" / "keys" / "lm-full.txt"
    if not keys.is_file():
        pytest.skip("the shared reference folder (../shared/reference) is not beside this checkout")
    from voicechat.glm.lm.checkpoint import expected_shapes, glm_config
    from voicechat.testing.lm import SHAPES, checkpoint_shapes

    published = {}
    for line in keys.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        published[name] = tuple(json.loads(shape))
        assert dtype == "bfloat16"
    config = json.loads((SHARED / "reference" / "glm-4-voice-9b" / "config.partial.json").read_text())
    assert expected_shapes(glm_config(config)) == published
    assert dict(checkpoint_shapes(SHAPES["full"])) == published
