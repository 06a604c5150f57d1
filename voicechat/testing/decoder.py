"""Random-weight GLM-4-Voice decoders in the published layout: config.yaml (hyperpyyaml), flow.pt, hift.pt.

"full" has the published architecture (flow 111,166,208 and HiFT 20,460,591 parameters); "tiny" keeps
every interface size (80 mel bins, 192-dim speaker vector, 16384 tokens, 12.5 tokens/s, blocks of 10,
22050 Hz, 256 samples per frame) with small widths. The F0 head is biased towards ~120 Hz so that the
voiced (sine) path of the vocoder is exercised, as it is with real weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(width=512, heads=8, units=2048, blocks=6, unet=256, head_dim=64, unet_blocks=4,
                 mid_blocks=12, unet_heads=8, hift=512),
    "tiny": dict(width=64, heads=2, units=128, blocks=2, unet=64, head_dim=16, unet_blocks=1,
                 mid_blocks=2, unet_heads=2, hift=64),
}


def config_text(size: str) -> str:
    """The decoder's config.yaml in the published hyperpyyaml form, at the given size."""
    s = SIZES[size]
    return f"""# GLM-4-Voice decoder ({size}, random weights)
__set_seed: !apply:torch.manual_seed [1986]

sample_rate: 22050
spk_embed_dim: 192

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {s['width']}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 16384
    input_frame_rate: 12.5
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.BlockConformerEncoder
        output_size: {s['width']}
        attention_heads: {s['heads']}
        linear_units: {s['units']}
        num_blocks: {s['blocks']}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'block_rel_selfattn'
        block_size: 10
        input_size: {s['width']}
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{s['unet']}, {s['unet']}]
            dropout: 0
            attention_head_dim: {s['head_dim']}
            n_blocks: {s['unet_blocks']}
            num_mid_blocks: {s['mid_blocks']}
            num_heads: {s['unet_heads']}
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {s['hift']}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {s['hift']}
"""


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter from ``generator`` (drawn on the generator's device): fan-in scaled
    weights, norms near one, small biases."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(param.shape, generator=generator, device=generator.device)
            if leaf == "weight_g":
                continue  # set from weight_v below, so that the effective weight is weight_v
            if leaf == "alpha" or (param.dim() == 1 and leaf == "weight"):
                param.copy_(1.0 + 0.1 * noise)  # norm scales and Snake frequencies
            elif param.dim() == 1 or leaf.startswith("pos_bias"):
                param.copy_(0.02 * noise)
            else:
                fan_in = param.shape[1] * math.prod(param.shape[2:]) if "ups." not in name else param.shape[0]
                param.copy_(noise / math.sqrt(fan_in))
        for module in model.modules():
            if hasattr(module, "weight_g"):
                v = module.weight_v
                module.weight_g.copy_(v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1)))


def random_models(files: Any, generator: torch.Generator) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Flow and HiFT for a decoder config, random, on the generator's device, float32."""
    from voicechat.glm.decoder.flow import MaskedDiffWithXvec
    from voicechat.glm.decoder.hift import HiFTGenerator

    with torch.device(generator.device):
        flow = MaskedDiffWithXvec(files.flow)
        hift = HiFTGenerator(files.hift)
    randomise(flow, generator)
    randomise(hift, generator)
    with torch.no_grad():
        # F0 around 120 Hz: voiced frames, so the sine source matters
        hift.f0_predictor.classifier.weight.mul_(0.1)
        hift.f0_predictor.classifier.bias.fill_(120.0)
        # small iSTFT magnitudes, so that random audio stays below the clipping limit
        hift.conv_post.weight_g.mul_(0.1)
        hift.conv_post.bias[: files.hift.n_fft // 2 + 1].fill_(-1.0)
    return flow.eval(), hift.eval()


def build(size: str = "tiny", device: Any = "cpu", dtype: Any = "float32", seed: int = 0,
          config: Path | None = None) -> Any:
    """A SpeechDecoder with random weights built directly on ``device`` (nothing large is written):
    from ``config`` (a published config.yaml) or this module's config of that size. The same seed
    on the same device gives the same weights in every dtype."""
    import tempfile

    from voicechat.glm.decoder import SpeechDecoder
    from voicechat.glm.decoder.config import load_decoder_config
    from voicechat.placement import resolve_device, resolve_dtype

    if config is None:
        with tempfile.TemporaryDirectory() as scratch:
            config = Path(scratch) / "config.yaml"
            config.write_text(config_text(size), encoding="utf-8")
            files = load_decoder_config(config)
    else:
        files = load_decoder_config(config)
    where = resolve_device(device)
    flow, hift = random_models(files, torch.Generator(device=where).manual_seed(seed))
    precision = resolve_dtype(dtype, where)
    return SpeechDecoder(files, flow.to(precision), hift.to(precision))


def write(out_dir: Path, size: str, seed: int) -> dict:
    from voicechat.glm.decoder.config import load_decoder_config

    folder = Path(out_dir).resolve() / "glm-4-voice-decoder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_text(size), encoding="utf-8")
    files = load_decoder_config(folder / "config.yaml")
    flow, hift = random_models(files, torch.Generator().manual_seed(seed))
    torch.save(flow.state_dict(), folder / "flow.pt")
    torch.save(hift.state_dict(), folder / "hift.pt")
    return {"models": {"decoder": {"source": str(folder)}}}
