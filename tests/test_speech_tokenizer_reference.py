"""An independent forward pass, written here from the reference's equations (eager attention with an
additive mask, explicit convolution padding, the reference's driver loop), gives the same tokens as
voicechat's tokenizer on the same random weights, for every option the config can switch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from tests.support.speech_tokenizer import RATE, speech_like
from voicechat.audio.files import read_audio
from voicechat.glm.speech_tokenizer import SpeechTokenizer
from voicechat.testing.speech_tokenizer import FULL_CONFIG, TINY_CHANGES, write_checkpoint


class ReferenceEncoder:
    """The WhisperVQ encoder's equations in plain tensor algebra, on a raw state dict."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file
        from transformers import WhisperFeatureExtractor

        self.config = json.loads((folder / "config.json").read_text())
        self.state = load_file(str(folder / "model.safetensors"))
        self.extractor = WhisperFeatureExtractor(**json.loads((folder / "preprocessor_config.json").read_text()))

    def tokens(self, audio: np.ndarray) -> tuple[list[int], torch.Tensor]:
        """extract_speech_token for one 16 kHz utterance: 30 s windows featurised together, padded to
        a multiple of conv strides x pooling x hop; tokens kept where the downsampled mask is 1."""
        config = self.config
        kernel = config["pooling_kernel_size"] or 1
        windows = [audio[start : start + 30 * RATE] for start in range(0, len(audio), 30 * RATE)]
        batch = self.extractor(windows, sampling_rate=RATE, return_attention_mask=True, return_tensors="pt",
                               padding="longest", pad_to_multiple_of=1 * 2 * kernel * self.extractor.hop_length)
        ids, hidden = self.forward(batch["input_features"], batch["attention_mask"])
        keep = batch["attention_mask"][:, ::2][:, ::kernel].bool()
        assert keep.shape == ids.shape
        return [t for row in range(len(windows)) for t in ids[row][keep[row]].tolist()], hidden[keep]

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config, state = self.config, self.state
        batch, _, frames = features.shape
        hidden = F.gelu(self.conv(features, "conv1", stride=1))
        hidden = F.gelu(self.conv(hidden, "conv2", stride=2)).permute(0, 2, 1)
        hidden = hidden + state["embed_positions.weight"][: frames // 2]
        mask = attention_mask[:, ::2]
        block = config["quantize_causal_block_size"]
        bias = self.attention_bias(mask, block)
        for index in range(config["quantize_position"]):
            hidden = self.layer(hidden, index, bias)
            if index + 1 == config["pooling_position"] and config["pooling_kernel_size"]:
                kernel = config["pooling_kernel_size"]
                pooled = hidden.permute(0, 2, 1)
                if pooled.shape[-1] % kernel:
                    pooled = F.pad(pooled, (0, kernel - pooled.shape[-1] % kernel))
                pool = torch.nn.AvgPool1d(kernel) if config["pooling_type"] == "avg" else torch.nn.MaxPool1d(kernel)
                hidden = pool(pooled).permute(0, 2, 1)
                mask = mask[:, ::kernel]
                block = block // kernel if block else None
                bias = self.attention_bias(mask, block)
        codebook = state["codebook.weight"]
        flat = hidden.reshape(-1, hidden.shape[-1])
        distances = torch.addmm(codebook.pow(2).sum(1) + flat.pow(2).sum(1, keepdim=True), flat, codebook.t(),
                                alpha=-2.0, beta=1.0)
        ids = distances.min(dim=1).indices.reshape(batch, -1)
        return ids, codebook[ids] + state["embed_positions2.weight"][: ids.shape[1]]

    def conv(self, x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        weight, bias = self.state[f"{name}.weight"], self.state[f"{name}.bias"]
        if self.config["encoder_causal_convolution"]:
            return F.conv1d(F.pad(x, (2, 0)), weight, bias, stride=stride)
        return F.conv1d(x, weight, bias, stride=stride, padding=1)

    def attention_bias(self, mask: torch.Tensor, block: int | None) -> torch.Tensor:
        """(B, 1, L, L) additive: 0 where a query may look, the dtype's minimum elsewhere."""
        length = mask.shape[1]
        if self.config["encoder_causal_attention"] or self.config["quantize_causal_encoder"]:
            allowed = torch.ones(length, length).tril().bool()[None]  # padding is not masked here
        elif block:
            squares = [torch.ones(min(block, length - s), min(block, length - s)) for s in range(0, length, block)]
            allowed = (torch.ones(length, length).tril().bool() | torch.block_diag(*squares).bool())[None]
            allowed = allowed & mask[:, None, :].bool()
        else:
            allowed = mask[:, None, :].bool().expand(-1, length, -1)
        return ((1.0 - allowed.float()) * torch.finfo(torch.float32).min)[:, None]

    def layer(self, hidden: torch.Tensor, index: int, bias: torch.Tensor) -> torch.Tensor:
        p = {k.removeprefix(f"layers.{index}."): v for k, v in self.state.items() if k.startswith(f"layers.{index}.")}
        batch, length, dim = hidden.shape
        heads = self.config["encoder_attention_heads"]
        x = F.layer_norm(hidden, (dim,), p["self_attn_layer_norm.weight"], p["self_attn_layer_norm.bias"])

        def heads_of(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, dim // heads).transpose(1, 2)

        q = heads_of((x @ p["self_attn.q_proj.weight"].T + p["self_attn.q_proj.bias"]) * (dim // heads) ** -0.5)
        k = heads_of(x @ p["self_attn.k_proj.weight"].T)
        v = heads_of(x @ p["self_attn.v_proj.weight"].T + p["self_attn.v_proj.bias"])
        weights = torch.softmax(q @ k.transpose(2, 3) + bias, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        hidden = hidden + attended @ p["self_attn.out_proj.weight"].T + p["self_attn.out_proj.bias"]
        x = F.layer_norm(hidden, (dim,), p["final_layer_norm.weight"], p["final_layer_norm.bias"])
        x = F.gelu(x @ p["fc1.weight"].T + p["fc1.bias"])
        return hidden + x @ p["fc2.weight"].T + p["fc2.bias"]


VARIANTS = {
    "published": {},
    "bidirectional convolutions": {"encoder_causal_convolution": False},
    "no blocks, padding mask only": {"quantize_causal_block_size": None},
    "small blocks": {"quantize_causal_block_size": 24},
    "causal attention": {"encoder_causal_attention": True},
    "max pooling after the first layer": {"pooling_type": "max", "pooling_position": 1},
    "full encoder checkpoint": {"quantize_encoder_only": False, "encoder_layers": 3, "num_hidden_layers": 3},
    "no quantiser statistics": {"quantize_ema_decay": None},
}


# Two 30 s windows cost seconds in the eager reference: only where padding across windows differs.
WITH_TWO_WINDOWS = ("published", "no blocks, padding mask only")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_independent_forward_pass_gives_the_same_tokens(variant: str, tmp_path: Path) -> None:
    utterances = [speech_like(7.3, seed=20), speech_like(0.5, seed=22)]
    if variant in WITH_TWO_WINDOWS:
        utterances.append(speech_like(31.0, seed=21))
    write_checkpoint(tmp_path, {**FULL_CONFIG, **TINY_CHANGES, **VARIANTS[variant]}, seed=len(variant))
    ours = SpeechTokenizer.from_pretrained(tmp_path, device="cpu")
    reference = ReferenceEncoder(tmp_path)
    expected = []
    for audio in utterances:
        tokens, hidden = reference.tokens(audio)
        expected.append(tokens)
        windows = [audio[start : start + 30 * RATE] for start in range(0, len(audio), 30 * RATE)]
        assert len(tokens) == sum(math.ceil(len(window) / 1280) for window in windows)
        assert ours.tokenize(audio, RATE) == tokens
        if len(audio) <= 30 * RATE:  # one window: the second positions run over all its tokens
            with torch.inference_mode():
                torch.testing.assert_close(ours.model.quantized_states(torch.tensor([tokens]))[0], hidden)
    assert ours.tokenize_batch([(a, RATE) for a in utterances], batch_windows=3) == expected


def test_independent_forward_pass_matches_the_upstream_vectors(parity_dir: Path) -> None:
    """Checks the equations above against the upstream implementation's own tokens."""
    reference = ReferenceEncoder(parity_dir)
    expected = json.loads((parity_dir / "ref_tokens.json").read_text())
    for name in ("s1_en.wav", "s2_zh.wav", "s3_short.wav", "syn_31s_16k.wav"):
        samples, rate = read_audio(parity_dir / "wavs" / name)
        assert rate == RATE
        assert reference.tokens(samples[:, 0])[0] == expected[name], name


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_speech_at_any_rate_gives_the_reference_tokens(tiny_tokenizer, tiny_tokenizer_dir: Path, rate: int) -> None:
    """The reference resamples with torchaudio's default sinc resampler before the encoder; another
    resampler (scipy's polyphase filter) changed 1 to 7 of these 50 tokens at every rate here."""
    reference = ReferenceEncoder(tiny_tokenizer_dir)
    for seed in (0, 1, 2):
        native = speech_like(4.0, seed=seed, rate=rate)
        audio = torchaudio.functional.resample(torch.from_numpy(native), rate, RATE).numpy()
        assert tiny_tokenizer.tokenize(native, rate) == reference.tokens(audio)[0], seed
