"""The flow-matching half of the GLM-4-Voice decoder: speech tokens -> 80-bin mel frames.

Read top to bottom: token embedding, the block-causal conformer encoder with relative positions,
the interpolating length regulator, the U-Net velocity estimator and the Euler solver with
classifier-free guidance. Module and parameter names follow the published flow.pt so that it loads
with ``load_state_dict(strict=True)``. Inference only: batch of one, no padding masks.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from voicechat.glm.decoder.config import EncoderConfig, EstimatorConfig, FlowConfig


class DecodingCancelled(Exception):
    """Raised between solver steps when the caller's cancel event is set."""


def frames_for_tokens(n_tokens: int, input_frame_rate: float = 12.5, sample_rate: int = 22050,
                      hop: int = 256) -> int:
    """Mel frames the flow makes for ``n_tokens`` tokens, computed as the reference does (float32)."""
    rate = torch.tensor([n_tokens], dtype=torch.int32) / input_frame_rate * sample_rate / hop
    return int(rate.int().item())


# --- encoder: block-causal conformer with relative positions --------------------------------------


def relative_position_encoding(length: int, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sinusoids for relative distances length-1 ... -(length-1), shape (1, 2*length-1, dim)."""
    distance = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
    inverse = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(2 * length - 1, dim, device=device)
    table[:, 0::2] = torch.sin(distance * inverse)
    table[:, 1::2] = torch.cos(distance * inverse)
    return table.unsqueeze(0).to(dtype)


def block_causal_mask(length: int, block_size: int, device: torch.device) -> torch.Tensor:
    """True where position i may attend to j: every position up to the end of i's block."""
    block_end = (torch.arange(length, device=device) // block_size + 1) * block_size
    return torch.arange(length, device=device).unsqueeze(0) < block_end.unsqueeze(1)


class BlockRelPositionAttention(nn.Module):
    """Transformer-XL style attention: content term (q+u)·k plus position term (q+v)·p(i-j)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.linear_q(x).view(batch, length, self.heads, self.head_dim)
        k = self.linear_k(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        # column (length-1-i+j) of row i holds distance i-j: pick it out for every (i, j)
        rows = torch.arange(length, device=x.device).unsqueeze(1)
        cols = torch.arange(length, device=x.device).unsqueeze(0)
        index = (length - 1 - rows + cols).expand(batch, self.heads, length, length)
        position = position.gather(-1, index)
        scores = (content + position) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm attention and feed-forward (this config has no convolution or macaron modules)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        dim = config.output_size
        self.self_attn = BlockRelPositionAttention(dim, config.attention_heads)
        self.feed_forward = FeedForward(dim, config.linear_units)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, allowed)
        return x + self.feed_forward(self.norm_ff(x))


class InputLayer(nn.Module):
    def __init__(self, input_size: int, dim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(input_size, dim), nn.LayerNorm(dim, eps=1e-5))


class BlockConformerEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embed = InputLayer(config.input_size, config.output_size)
        self.encoders = nn.ModuleList(ConformerLayer(config) for _ in range(config.num_blocks))
        self.after_norm = nn.LayerNorm(config.output_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (1, tokens, input_size); blocks are counted from the first position of x."""
        dim = self.config.output_size
        x = self.embed.out(x) * math.sqrt(dim)
        pos_emb = relative_position_encoding(x.shape[1], dim, x.dtype, x.device)
        allowed = block_causal_mask(x.shape[1], self.config.block_size, x.device)
        for layer in self.encoders:
            x = layer(x, pos_emb, allowed)
        return self.after_norm(x)


# --- length regulator -----------------------------------------------------------------------------


class InterpolateRegulator(nn.Module):
    """Nearest-neighbour stretch from token rate to mel rate, then a small conv stack."""

    def __init__(self, channels: int, layers: int):
        super().__init__()
        stack: list[nn.Module] = []
        for _ in range(layers):
            stack += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        stack.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*stack)

    def forward(self, h: torch.Tensor, n_frames: int) -> torch.Tensor:
        """h: (1, tokens, channels) -> (1, channels, n_frames)."""
        stretched = F.interpolate(h.transpose(1, 2), size=n_frames, mode="nearest")
        return self.model(stretched)


# --- U-Net velocity estimator ---------------------------------------------------------------------


def timestep_sinusoids(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of the flow time t (a scalar), shape (1, dim)."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = scale * t.reshape(1, 1).float() * frequencies.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block1D(nn.Module):
    """Conv -> GroupNorm(8) -> Mish."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = Block1D(dim, dim_out)
        self.block2 = Block1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h) + self.res_conv(x)


class GELUProjection(nn.Module):
    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class SelfAttention(nn.Module):
    """Plain multi-head self-attention with bias-free q/k/v (diffusers' Attention layout)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, length, -1))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GELUProjection(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        h = self.norm3(x)
        for module in self.ff.net:
            h = module(h)
        return x + h


class Downsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNetStage(nn.ModuleList):
    """[resnet, transformer blocks, optional resampling conv] under the checkpoint's indices 0, 1, 2."""

    def run(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        x = self[0](x, time_emb).transpose(1, 2)
        for block in self[1]:
            x = block(x)
        return x.transpose(1, 2)


class ConditionalDecoder(nn.Module):
    """1-D U-Net over (x, mu, speaker, cond) stacked on channels; predicts the flow's velocity."""

    def __init__(self, config: EstimatorConfig):
        super().__init__()
        self.config = config
        time_dim = config.channels[0] * 4
        self.time_mlp = TimestepMLP(config.in_channels, time_dim)

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, config.num_heads, config.attention_head_dim)
                                 for _ in range(config.n_blocks))

        self.down_blocks = nn.ModuleList()
        width_in = config.in_channels
        for i, width in enumerate(config.channels):
            last = i == len(config.channels) - 1
            resample = nn.Conv1d(width, width, 3, padding=1) if last else Downsample1D(width)
            self.down_blocks.append(UNetStage([ResnetBlock1D(width_in, width, time_dim), transformers(width), resample]))
            width_in = width
        self.mid_blocks = nn.ModuleList(
            UNetStage([ResnetBlock1D(width_in, width_in, time_dim), transformers(width_in)])
            for _ in range(config.num_mid_blocks)
        )
        widths = tuple(reversed(config.channels)) + (config.channels[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(config.channels)):
            last = i == len(config.channels) - 1
            out = widths[i + 1]
            resample = nn.Conv1d(out, out, 3, padding=1) if last else Upsample1D(out)
            self.up_blocks.append(UNetStage([ResnetBlock1D(2 * widths[i], out, time_dim), transformers(out), resample]))
        self.final_block = Block1D(widths[-1], widths[-1])
        self.final_proj = nn.Conv1d(widths[-1], config.out_channels, 1)

    def forward(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        time_emb = self.time_mlp(timestep_sinusoids(t, self.config.in_channels).to(x.dtype))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)
        skips = []
        for stage in self.down_blocks:
            x = stage.run(x, time_emb)
            skips.append(x)
            x = stage[2](x)
        for stage in self.mid_blocks:
            x = stage.run(x, time_emb)
        for stage in self.up_blocks:
            skip = skips.pop()
            x = torch.cat([x[:, :, :skip.shape[-1]], skip], dim=1)
            x = stage[2](stage.run(x, time_emb))
        return self.final_proj(self.final_block(x))


class ConditionalCFM(nn.Module):
    """Euler solver of the flow ODE from noise to mel, with classifier-free guidance."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.n_timesteps = config.n_timesteps
        self.cfg_rate = config.inference_cfg_rate
        self.estimator = ConditionalDecoder(config.estimator)
        self.graphs = None  # a GraphedEstimator replays the estimator as CUDA graphs (see graphs.py)

    def forward(self, noise: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
                cancel: threading.Event | None = None) -> torch.Tensor:
        t_span = torch.linspace(0, 1, self.n_timesteps + 1, device=mu.device)
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)  # cosine schedule: small steps first
        x = noise
        t, dt = t_span[0], t_span[1] - t_span[0]
        guided = self.cfg_rate > 0
        estimator = self.graphs if self.graphs is not None else self.estimator
        if guided:  # conditional and unconditional velocities in one batch of two
            mu = torch.cat([mu, torch.zeros_like(mu)])
            spks = torch.cat([spks, torch.zeros_like(spks)])
            cond = torch.cat([cond, torch.zeros_like(cond)])
        for step in range(1, len(t_span)):
            if cancel is not None and cancel.is_set():
                raise DecodingCancelled
            if guided:
                velocity, unconditional = estimator(torch.cat([x, x]), mu, t, spks, cond).chunk(2)
                velocity = (1.0 + self.cfg_rate) * velocity - self.cfg_rate * unconditional
            else:
                velocity = estimator(x, mu, t, spks, cond)
            x = x + dt * velocity
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x


# --- the whole flow model -------------------------------------------------------------------------


class MaskedDiffWithXvec(nn.Module):
    """Tokens (with optional prompt mel as condition) -> mel frames."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = BlockConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.decoder = ConditionalCFM(config)
        self.length_regulator = InterpolateRegulator(config.regulator_channels, config.regulator_layers)

    @torch.no_grad()
    def inference(self, tokens: torch.Tensor, n_frames: int, noise: torch.Tensor,
                  cond: torch.Tensor | None = None, embedding: torch.Tensor | None = None,
                  cancel: threading.Event | None = None) -> torch.Tensor:
        """Mel for all of ``tokens`` (1, T): (1, mel_bins, n_frames).

        ``noise`` (1, mel_bins, n_frames) is the solver's starting point; ``cond`` holds prompt mel
        where known and zeros elsewhere; ``embedding`` is a speaker vector (zeros when None).
        Raises DecodingCancelled between solver steps once ``cancel`` is set.
        """
        dtype = self.spk_embed_affine_layer.weight.dtype
        if embedding is None:
            embedding = torch.zeros(1, self.config.spk_embed_dim, device=tokens.device, dtype=dtype)
        spks = self.spk_embed_affine_layer(F.normalize(embedding.float(), dim=1).to(dtype))  # eps underflows in fp16
        h = self.encoder(self.input_embedding(tokens.clamp(min=0)))
        mu = self.length_regulator(self.encoder_proj(h), n_frames)
        if cond is None:
            cond = torch.zeros_like(mu)
        return self.decoder(noise.to(dtype), mu, spks, cond.to(dtype), cancel)
