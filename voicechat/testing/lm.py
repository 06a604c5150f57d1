"""GLM-4-Voice-9B with random weights, in the published ChatGLM layout.

The folder holds what the published repository holds for loading without its remote code:
config.json (ChatGLM field names), sharded safetensors with the original parameter names plus
model.safetensors.index.json, and the tokenizer files (tiktoken-style `tokenizer.model` and
`tokenizer_config.json` with the chat markers and all 16384 <|audio_N|> tokens).

`full` has the published shapes (9.54B parameters, ~19 GB in bf16) and is only for GPU benchmarks;
it is written shard by shard, so memory stays near one shard.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

FOLDER = "glm-4-voice-9b"

# Added tokens of GLM-4 in id order from the end of the BPE ranks, then the audio markers. The
# published files put <|audio_0|> 1024 ids after the first added token; the same gap is kept here.
CHAT_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>",
)
AUDIO_GAP = 1024
AUDIO_TOKENS = 16384


@dataclass(frozen=True)
class LMShape:
    ranks: int  # BPE vocabulary before the added tokens
    hidden: int
    layers: int
    heads: int
    groups: int  # key/value heads
    head_dim: int
    ffn: int
    padded_vocab: int
    shard_bytes: int


SHAPES = {
    "tiny": LMShape(ranks=1024, hidden=64, layers=2, heads=4, groups=2, head_dim=16, ffn=96,
                    padded_vocab=18496, shard_bytes=3_000_000),
    # vLLM derives the head size from hidden / heads, and its CPU attention has kernels for head
    # sizes 32, 64, 80, ... (not 16): the tiny model made wide enough for vLLM to serve it.
    "tiny-vllm": LMShape(ranks=1024, hidden=256, layers=2, heads=4, groups=2, head_dim=64, ffn=384,
                         padded_vocab=18496, shard_bytes=6_000_000),
    "full": LMShape(ranks=151329, hidden=4096, layers=40, heads=32, groups=2, head_dim=128,
                    ffn=13696, padded_vocab=168960, shard_bytes=5_000_000_000),
}

# Training text for the tiny BPE vocabulary: English and Chinese, so that tests exercise
# multi-byte characters split across tokens.
CORPUS = """
The library opens at nine in the morning and closes at six in the evening on weekdays.
Retrieval brings the passages that answer a question into the prompt of the language model.
A speech token stands for eighty milliseconds of audio; the decoder turns tokens into sound.
Questions about the weather, the train timetable and the opening hours are the most common.
Please speak slowly and clearly so that everyone in the room can understand the answer.
图书馆在工作日早上九点开门，晚上六点关门。检索把能回答问题的段落放进语言模型的提示里。
语音令牌代表八十毫秒的声音，解码器把令牌变成声音。请用标准普通话回答，语气自然亲切。
天气、火车时刻表和开放时间是最常见的问题。请慢慢地、清楚地说，让房间里的每个人都能听懂。
"""


def write(out_dir: Path, size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    import torch

    shape = SHAPES[size]
    folder = out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    ranks = _bpe_vocabulary(shape.ranks, generator)
    _write_tokenizer(folder, ranks)
    if len(ranks) != shape.ranks:
        raise ValueError("the BPE vocabulary did not reach its size")
    (folder / "config.json").write_text(json.dumps(chatglm_config(shape), indent=2), encoding="utf-8")
    _write_shards(folder, shape, generator)
    return {"models": {"lm": {"source": str(folder.resolve()), "dtype": "bfloat16" if size == "full" else "float32"}}}


def write_tokenizer(folder: Path, size: str = "tiny", seed: int = 0) -> None:
    """Only the tokenizer files ``write`` writes (the same vocabulary for the same seed), for
    benchmarks that build the model itself in memory with ``build``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(folder, _bpe_vocabulary(SHAPES[size].ranks, torch.Generator().manual_seed(seed)))


def build(size: str = "tiny", device: Any = "cpu", dtype: Any = "float32", quantization: str = "none",
          seed: int = 0) -> Any:
    """The model ``write`` would put on disk, built directly on ``device`` (a LoadedLM): the same
    ChatGLM config and tensor names, through the loader's own conversion and placement, with the
    random tensors drawn on the device. Nothing is written; the same seed gives the same weights."""
    import torch

    from voicechat.glm.lm.checkpoint import build_glm, glm_config
    from voicechat.placement import resolve_device

    shape = SHAPES[size]
    generator = torch.Generator(device=resolve_device(device)).manual_seed(seed)
    tensors = ((name, _random_tensor(name, dims, generator)) for name, dims in checkpoint_shapes(shape))
    return build_glm(glm_config(chatglm_config(shape)), tensors, device, dtype, quantization,
                     source=f"the random {size} model")


# --- tokenizer --------------------------------------------------------------------------------


def _bpe_vocabulary(size: int, generator: Any) -> list[bytes]:
    """All 256 bytes, merges learned from CORPUS, then (for the full size) random unions of
    existing tokens until the published vocabulary size is reached."""
    import torch
    import regex

    from voicechat.glm.text_tokenizer import SPLIT_PATTERN

    tokens = [bytes([b]) for b in range(256)]
    known = set(tokens)
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in regex.findall(SPLIT_PATTERN, CORPUS))
    while len(tokens) < size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merged = best[0] + best[1]
        tokens.append(merged)
        known.add(merged)
        words = Counter({_merge(word, best, merged): count for word, count in words.items()})
    while len(tokens) < size:
        a, b = torch.randint(len(tokens), (2,), generator=generator).tolist()
        merged = tokens[a] + tokens[b]
        if merged not in known and len(merged) <= 16:
            tokens.append(merged)
            known.add(merged)
    return tokens


def _merge(word: tuple[bytes, ...], pair: tuple[bytes, bytes], merged: bytes) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _added_tokens(first_id: int) -> dict[int, str]:
    added = {first_id + i: name for i, name in enumerate(CHAT_TOKENS)}
    added.update({first_id + AUDIO_GAP + n: f"<|audio_{n}|>" for n in range(AUDIO_TOKENS)})
    return added


def _write_tokenizer(folder: Path, ranks: list[bytes]) -> None:
    lines = (f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(ranks))
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n", encoding="ascii")
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "added_tokens_decoder": {str(i): {"content": name, **entry} for i, name in _added_tokens(len(ranks)).items()},
        "additional_special_tokens": list(CHAT_TOKENS[2:]),
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 128000,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


# --- model ------------------------------------------------------------------------------------


def chatglm_config(shape: LMShape) -> dict[str, Any]:
    """config.json as the published folder has it (ChatGLM field names), for this shape."""
    added = _added_tokens(shape.ranks)
    ids = {name: i for i, name in added.items()}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    if max(added) >= shape.padded_vocab:
        raise ValueError("the padded vocabulary is too small for the added tokens")
    return {
        "_name_or_path": "THUDM/glm-4-voice-9b",
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "architectures": ["ChatGLMForConditionalGeneration"],
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "bias_dropout_fusion": True,
        "classifier_dropout": None,
        "eos_token_id": eos,
        "ffn_hidden_size": shape.ffn,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": shape.hidden,
        "kv_channels": shape.head_dim,
        "layernorm_epsilon": 3.90625e-08,
        "model_type": "chatglm",
        "multi_query_attention": True,
        "multi_query_group_num": shape.groups,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_layers": shape.layers,
        "original_rope": True,
        "pad_token_id": eos[0],
        "padded_vocab_size": shape.padded_vocab,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": 1,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.44.1",
        "use_cache": True,
        "vocab_size": shape.padded_vocab,
    }


def checkpoint_shapes(shape: LMShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Names and shapes in the order of the published checkpoint."""
    qkv = (shape.heads + 2 * shape.groups) * shape.head_dim
    yield "transformer.embedding.word_embeddings.weight", (shape.padded_vocab, shape.hidden)
    yield "transformer.rotary_pos_emb.inv_freq", (shape.head_dim // 4,)
    for n in range(shape.layers):
        layer = f"transformer.encoder.layers.{n}."
        yield layer + "input_layernorm.weight", (shape.hidden,)
        yield layer + "self_attention.query_key_value.weight", (qkv, shape.hidden)
        yield layer + "self_attention.query_key_value.bias", (qkv,)
        yield layer + "self_attention.dense.weight", (shape.hidden, shape.heads * shape.head_dim)
        yield layer + "post_attention_layernorm.weight", (shape.hidden,)
        yield layer + "mlp.dense_h_to_4h.weight", (2 * shape.ffn, shape.hidden)
        yield layer + "mlp.dense_4h_to_h.weight", (shape.hidden, shape.ffn)
    yield "transformer.encoder.final_layernorm.weight", (shape.hidden,)
    yield "transformer.output_layer.weight", (shape.padded_vocab, shape.hidden)


def _random_tensor(name: str, size: tuple[int, ...], generator: Any) -> Any:
    import torch

    if name.endswith("inv_freq"):
        rotary = 2 * size[0]  # ChatGLM rotates half of each head: inv_freq over that half
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
        return inv_freq.to(device=generator.device, dtype=torch.bfloat16)
    # drawn where the generator lives, in bf16: no float32 copy in memory
    noise = torch.randn(size, generator=generator, dtype=torch.bfloat16, device=generator.device)
    if name.endswith("layernorm.weight"):
        return noise.mul_(0.1).add_(1.0)
    return noise.mul_(0.02 if name.endswith("weight") else 0.1)


def _write_shards(folder: Path, shape: LMShape, generator: Any) -> None:
    """Tensors are created, written and dropped one shard at a time."""
    from safetensors.torch import save_file

    names = list(checkpoint_shapes(shape))
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in names:
        nbytes = 2 * _numel(dims)
        if groups[-1] and size + nbytes > shape.shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, dims))
        size += nbytes
    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    weight_map: dict[str, str] = {}
    for index, group in enumerate(groups, start=1):
        file = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: _random_tensor(name, dims, generator) for name, dims in group},
                  str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name, _ in group})
    total = sum(2 * _numel(dims) for _, dims in names)
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2), encoding="utf-8")


def _numel(dims: tuple[int, ...]) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def parameter_count(size: str) -> int:
    return sum(_numel(dims) for name, dims in checkpoint_shapes(SHAPES[size]) if not name.endswith("inv_freq"))

