"""The vocoder half of the GLM-4-Voice decoder: HiFT (neural source-filter + iSTFT), mel -> 22.05 kHz.

Read top to bottom: weight-normalised convolutions (the checkpoint stores ``weight_g``/``weight_v``),
the Snake residual blocks, the F0 predictor, the harmonic sine source, the generator with its iSTFT
head. Parameter names follow the published hift.pt (strict load). The source takes its random phases
and noise as arguments, and its running phase as a start value, so that a caller can vocode a long
reply piece by piece and get the samples a single pass would give.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voicechat.glm.decoder.config import HiftConfig


# --- weight-normalised convolutions ---------------------------------------------------------------


class _WeightNorm:
    """weight = g * v / ||v||, the norm taken over every dimension but the first."""

    weight_g: nn.Parameter
    weight_v: nn.Parameter

    def _init_weight_norm(self, weight: torch.Tensor) -> None:
        self.weight_v = nn.Parameter(weight.detach().clone())
        self.weight_g = nn.Parameter(weight.detach().flatten(1).norm(dim=1).view(-1, *[1] * (weight.dim() - 1)))
        del self.weight

    def normalised_weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1)))


class WNConv1d(nn.Conv1d, _WeightNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalised_weight(), self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d, _WeightNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.normalised_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


# --- blocks ---------------------------------------------------------------------------------------


class Snake(nn.Module):
    """x + sin²(αx)/α, one α per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.view(1, -1, 1)
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """Per dilation: snake, dilated conv, snake, conv; residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class ConvRNNF0Predictor(nn.Module):
    """Five conv+ELU layers and a linear head: one non-negative F0 (Hz) per mel frame."""

    def __init__(self, in_channels: int, cond_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [WNConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, mel_bins, T) -> (1, T)."""
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class SourceModule(nn.Module):
    """Merges the harmonic sine waves into one excitation signal (only the linear layer is learned)."""

    def __init__(self, harmonics: int):
        super().__init__()
        self.l_linear = nn.Linear(harmonics, 1)


def sine_waves(f0: torch.Tensor, config: HiftConfig, start_cycles: float, phases: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The harmonic sine source (before merging), float32 (harmonics, samples).

    f0: (T,) Hz per mel frame, each frame lasting ``samples_per_frame`` samples. ``start_cycles``: the
    fundamental's phase accumulated before the first sample, in cycles (0 at the start of a reply);
    the returned float is the phase accumulated through the last sample, for the next piece. The
    accumulation is in float64, so pieces join seamlessly. ``phases``: (harmonics,) random start
    phases, the fundamental's forced to zero. ``noise``: standard normal (harmonics, samples).
    """
    hop = config.samples_per_frame
    harmonics = config.nb_harmonics + 1
    per_sample = f0.double().repeat_interleave(hop) / config.sampling_rate  # cycles per sample
    cycles = start_cycles + torch.cumsum(per_sample, dim=0)
    multiples = torch.arange(1, harmonics + 1, dtype=torch.float64, device=f0.device).unsqueeze(1)
    theta = (2 * math.pi * torch.remainder(cycles.unsqueeze(0) * multiples, 1.0)).float()
    phases = phases.clone().float()
    phases[0] = 0
    sines = config.nsf_alpha * torch.sin(theta + phases.unsqueeze(1))
    voiced = (f0 > config.nsf_voiced_threshold).float().repeat_interleave(hop).unsqueeze(0)
    noise_amp = voiced * config.nsf_sigma + (1 - voiced) * config.nsf_alpha / 3
    end_cycles = float(cycles[-1]) if len(cycles) else start_cycles
    return sines * voiced + noise_amp * noise, end_cycles


# --- generator ------------------------------------------------------------------------------------


class HiFTGenerator(nn.Module):
    def __init__(self, config: HiftConfig):
        super().__init__()
        self.config = config
        base = config.base_channels
        self.m_source = SourceModule(config.nb_harmonics + 1)
        self.conv_pre = WNConv1d(config.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        spec_channels = config.n_fft + 2
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        # the source spectrogram is at the final rate; bring it down to each upsampling stage's rate
        rates = [1] + list(config.upsample_rates[::-1][:-1])
        cumulative = [math.prod(rates[: i + 1]) for i in range(len(rates))][::-1]
        for i, (u, k, d) in enumerate(zip(cumulative, config.source_resblock_kernel_sizes,
                                          config.source_resblock_dilation_sizes)):
            width = base // 2 ** (i + 1)
            down = nn.Conv1d(spec_channels, width, 1, 1) if u == 1 else \
                nn.Conv1d(spec_channels, width, u * 2, u, padding=u // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(width, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        self.conv_post = WNConv1d(base // 2 ** len(self.ups), spec_channels, 7, 1, padding=3)
        self.f0_predictor = ConvRNNF0Predictor(config.in_channels, config.f0_cond_channels)

    def excitation(self, sines: torch.Tensor) -> torch.Tensor:
        """(harmonics, samples) sine source -> (1, 1, samples) merged excitation."""
        weight = self.m_source.l_linear.weight.float()
        bias = self.m_source.l_linear.bias.float()
        return torch.tanh(F.linear(sines.t(), weight, bias)).t().unsqueeze(0)

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.config.n_fft, periodic=True, device=device)  # float32 in every dtype

    def _stft(self, signal: torch.Tensor) -> torch.Tensor:
        c = self.config
        spec = torch.stft(signal, c.n_fft, c.hop_len, c.n_fft, window=self._window(signal.device), return_complex=True)
        spec = torch.view_as_real(spec)
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def _istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        c = self.config
        magnitude = torch.clip(magnitude, max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, c.n_fft, c.hop_len, c.n_fft, window=self._window(spec.device))

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, excitation: torch.Tensor) -> torch.Tensor:
        """mel (1, bins, T) and excitation (1, 1, T * samples_per_frame) -> audio (1, samples), float32."""
        c = self.config
        dtype = self.conv_pre.weight_v.dtype
        source = self._stft(excitation.float().squeeze(1)).to(dtype)
        x = self.conv_pre(mel.to(dtype))
        kernels = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, c.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](source))
            x = sum(self.resblocks[i * kernels + j](x) for j in range(kernels)) / kernels
        x = self.conv_post(F.leaky_relu(x)).float()
        bins = c.n_fft // 2 + 1
        audio = self._istft(torch.exp(x[:, :bins]), torch.sin(x[:, bins:]))
        return torch.clamp(audio, -c.audio_limit, c.audio_limit)
