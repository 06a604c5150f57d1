"""Reading the decoder's published config.yaml.

The file is hyperpyyaml: ``!new:cosyvoice.flow.flow.MaskedDiffWithXvec`` builds an object of a class
this project does not have, ``!ref <sample_rate>`` points at another key, ``!apply:torch.manual_seed``
calls a function at load time. We parse it with a safe YAML loader whose tag handlers only *record*
what each tag names (never import or call it), then read the flow and HiFT parameters into typed
dataclasses. Anything we do not know or cannot honour is a ModelError naming the file and key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from voicechat.errors import ModelError


# --- the recorded hyperpyyaml tree ----------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A ``!new:``, ``!name:`` or ``!apply:`` node: what it names and the arguments it was given."""

    kind: str  # "new", "name" or "apply"
    target: str  # dotted name, e.g. "cosyvoice.flow.flow.MaskedDiffWithXvec"
    kwargs: dict[str, Any]
    args: tuple[Any, ...] = ()

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Ref:
    """A ``!ref <key>`` node, resolved after the whole file is read."""

    expression: str


class _RecordingLoader(yaml.SafeLoader):
    """SafeLoader that turns hyperpyyaml tags into plain records."""


def _tagged(kind: str):
    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
        if isinstance(node, yaml.MappingNode):
            return Tagged(kind, suffix, loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Tagged(kind, suffix, {}, tuple(loader.construct_sequence(node, deep=True)))
        value = loader.construct_scalar(node)
        return Tagged(kind, suffix, {}, (value,) if value != "" else ())

    return construct


def _ref(loader: yaml.SafeLoader, node: yaml.Node) -> Ref:
    return Ref(str(loader.construct_scalar(node)))


for _kind in ("new", "name", "apply"):
    _RecordingLoader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_RecordingLoader.add_constructor("!ref", _ref)
_RecordingLoader.add_constructor("!copy", _ref)  # a deep copy of the referenced value reads the same

_REF = re.compile(r"^<([A-Za-z_][\w.]*)>$")


def read_hyperpyyaml(path: Path) -> dict[str, Any]:
    """The file as nested dicts and Tagged records, with ``!ref <key>`` resolved."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: decoder config not found; the decoder folder needs config.yaml, "
                         "flow.pt and hift.pt") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: cannot read the decoder config ({error})") from None
    try:
        data = yaml.load(text, Loader=_RecordingLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ModelError(f"{path}:{where}: not a valid decoder config ({problem})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a valid decoder config (expected a mapping at the top level)")
    return _resolve(data, data, path, "", set())


def _resolve(value: Any, top: dict[str, Any], path: Path, where: str, seen: set[str]) -> Any:
    if isinstance(value, Ref):
        match = _REF.match(value.expression.strip())
        if not match:
            raise ModelError(f"{path}: {where}: unsupported reference {value.expression!r} "
                             "(only '!ref <key>' is understood)")
        key = match.group(1)
        if key in seen:
            raise ModelError(f"{path}: {where}: reference <{key}> refers to itself")
        node: Any = top
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ModelError(f"{path}: {where}: reference <{key}> names no key in the file")
            node = node[part]
        return _resolve(node, top, path, where, seen | {key})
    if isinstance(value, Tagged):
        kwargs = {k: _resolve(v, top, path, f"{where}.{k}", seen) for k, v in value.kwargs.items()}
        args = tuple(_resolve(v, top, path, where, seen) for v in value.args)
        return dataclasses.replace(value, kwargs=kwargs, args=args)
    if isinstance(value, dict):
        return {k: _resolve(v, top, path, f"{where}.{k}" if where else str(k), seen)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top, path, where, seen) for v in value]
    return value


# --- typed parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """BlockConformerEncoder: linear input layer, relative positions, block-causal attention."""

    input_size: int
    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    block_size: int


@dataclass(frozen=True)
class EstimatorConfig:
    """ConditionalDecoder: the U-Net that predicts the flow's velocity."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...]
    attention_head_dim: int
    n_blocks: int
    num_mid_blocks: int
    num_heads: int


@dataclass(frozen=True)
class FlowConfig:
    """MaskedDiffWithXvec with its encoder, length regulator and ConditionalCFM."""

    input_size: int
    output_size: int
    spk_embed_dim: int
    vocab_size: int
    input_frame_rate: float
    encoder: EncoderConfig
    regulator_channels: int
    regulator_layers: int  # number of (conv, norm, mish) groups before the final 1x1 conv
    cfm_in_channels: int
    cfm_spk_emb_dim: int
    sigma_min: float
    inference_cfg_rate: float
    estimator: EstimatorConfig
    n_timesteps: int = 10  # fixed in the reference's inference code, not in the file


@dataclass(frozen=True)
class HiftConfig:
    """HiFTGenerator: neural source-filter + iSTFT vocoder, with its F0 predictor."""

    in_channels: int
    base_channels: int
    nb_harmonics: int
    sampling_rate: int
    nsf_alpha: float
    nsf_sigma: float
    nsf_voiced_threshold: float
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    n_fft: int
    hop_len: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    source_resblock_kernel_sizes: tuple[int, ...]
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    lrelu_slope: float
    audio_limit: float
    f0_cond_channels: int
    f0_num_class: int

    @property
    def samples_per_frame(self) -> int:
        product = self.hop_len
        for rate in self.upsample_rates:
            product *= rate
        return product


@dataclass(frozen=True)
class DecoderFiles:
    """The parameters of both models of one decoder folder."""

    flow: FlowConfig
    hift: HiftConfig
    sample_rate: int


class _Params:
    """Reads the kwargs of one Tagged node: each taken key is checked off, leftovers are errors."""

    def __init__(self, node: Any, expected_class: str, path: Path, where: str):
        if not isinstance(node, Tagged) or node.kind != "new":
            raise ModelError(f"{path}: {where}: expected '!new:...{expected_class}', found {_describe(node)}")
        if node.class_name != expected_class:
            raise ModelError(f"{path}: {where}: expected a {expected_class}, found {node.target}; "
                             "this decoder architecture is not supported")
        self.kwargs = dict(node.kwargs)
        self.path = path
        self.where = where

    def _missing(self, key: str) -> ModelError:
        return ModelError(f"{self.path}: {self.where}.{key}: missing parameter")

    def raw(self, key: str, default: Any = ...) -> Any:
        if key in self.kwargs:
            return self.kwargs.pop(key)
        if default is ...:
            raise self._missing(key)
        return default

    def int(self, key: str, default: Any = ...) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, value, "an integer")
        return value

    def float(self, key: str, default: Any = ...) -> float:
        value = self.raw(key, default)
        if isinstance(value, str):  # YAML 1.1 reads 1e-06 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, value, "a number")
        return float(value)

    def ints(self, key: str) -> tuple[int, ...]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self._bad(key, value, "a list of integers")
        return tuple(value)

    def int_lists(self, key: str) -> tuple[tuple[int, ...], ...]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
            raise self._bad(key, value, "a list of lists of integers")
        return tuple(tuple(int(x) for x in v) for v in value)

    def require(self, key: str, allowed: Any, default: Any = ...) -> None:
        """A parameter this implementation supports only at one value (or a set of values)."""
        value = self.raw(key, default)
        options = allowed if isinstance(allowed, tuple) else (allowed,)
        if value not in options:
            raise ModelError(f"{self.path}: {self.where}.{key}: {value!r} is not supported "
                             f"(supported: {', '.join(repr(o) for o in options)})")

    def ignore(self, *keys: str) -> None:
        """Training-only parameters (dropout, losses): accepted and not used at inference."""
        for key in keys:
            self.kwargs.pop(key, None)

    def done(self) -> None:
        if self.kwargs:
            key = sorted(self.kwargs)[0]
            raise ModelError(f"{self.path}: {self.where}.{key}: unknown parameter; this config is "
                             "not a GLM-4-Voice decoder config this version understands")

    def _bad(self, key: str, value: Any, noun: str) -> ModelError:
        return ModelError(f"{self.path}: {self.where}.{key}: expected {noun}, got {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, Tagged):
        return f"'!{value.kind}:{value.target}'"
    if value is None:
        return "nothing"
    return repr(value)


def load_decoder_config(path: Path) -> DecoderFiles:
    """Parse config.yaml of a glm-4-voice-decoder folder."""
    path = Path(path)
    top = read_hyperpyyaml(path)
    for key in ("flow", "hift"):
        if key not in top:
            raise ModelError(f"{path}: {key}: missing section; this is not a GLM-4-Voice decoder config")
    flow = _flow_config(top["flow"], path)
    hift = _hift_config(top["hift"], path)
    sample_rate = top.get("sample_rate", hift.sampling_rate)
    if sample_rate != hift.sampling_rate:
        raise ModelError(f"{path}: sample_rate {sample_rate} differs from hift.sampling_rate {hift.sampling_rate}")
    return DecoderFiles(flow=flow, hift=hift, sample_rate=int(sample_rate))


def _flow_config(node: Any, path: Path) -> FlowConfig:
    p = _Params(node, "MaskedDiffWithXvec", path, "flow")
    input_size, output_size = p.int("input_size"), p.int("output_size")
    spk_embed_dim, vocab_size = p.int("spk_embed_dim"), p.int("vocab_size")
    input_frame_rate = p.float("input_frame_rate")
    p.require("output_type", "mel", "mel")
    p.ignore("only_mask_loss")
    encoder = _encoder_config(p.raw("encoder"), path)
    regulator_channels, regulator_layers = _regulator_config(p.raw("length_regulator"), path)
    cfm = _Params(p.raw("decoder"), "ConditionalCFM", path, "flow.decoder")
    cfm_in_channels, cfm_spk = cfm.int("in_channels"), cfm.int("spk_emb_dim")
    cfm.require("n_spks", 1, 1)
    sigma_min, cfg_rate = _cfm_params(cfm.raw("cfm_params"), path)
    estimator = _estimator_config(cfm.raw("estimator"), path)
    cfm.done()
    p.done()
    if encoder.input_size != input_size:
        raise ModelError(f"{path}: flow.encoder.input_size {encoder.input_size} must equal flow.input_size {input_size}")
    if regulator_channels != output_size:
        raise ModelError(f"{path}: flow.length_regulator.channels must equal flow.output_size {output_size}")
    if estimator.in_channels != 4 * output_size or estimator.out_channels != output_size:
        raise ModelError(f"{path}: flow.decoder.estimator in/out channels must be {4 * output_size}/{output_size}")
    return FlowConfig(input_size, output_size, spk_embed_dim, vocab_size, input_frame_rate, encoder,
                      regulator_channels, regulator_layers, cfm_in_channels, cfm_spk, sigma_min, cfg_rate,
                      estimator)


def _encoder_config(node: Any, path: Path) -> EncoderConfig:
    p = _Params(node, "BlockConformerEncoder", path, "flow.encoder")
    config = EncoderConfig(
        input_size=p.int("input_size"), output_size=p.int("output_size"),
        attention_heads=p.int("attention_heads"), linear_units=p.int("linear_units"),
        num_blocks=p.int("num_blocks"), block_size=p.int("block_size", 25),
    )
    p.require("normalize_before", True, True)
    p.require("input_layer", "linear")
    p.require("pos_enc_layer_type", "rel_pos_espnet")
    p.require("selfattention_layer_type", "block_rel_selfattn", "rel_selfattn")
    p.require("use_cnn_module", False)
    p.require("macaron_style", False)
    p.require("activation_type", "swish", "swish")
    p.require("static_chunk_size", 0, 0)
    p.require("use_dynamic_chunk", False, False)
    p.require("use_dynamic_left_chunk", False, False)
    p.require("key_bias", True, True)
    p.require("global_cmvn", None, None)
    p.ignore("dropout_rate", "positional_dropout_rate", "attention_dropout_rate", "gradient_checkpointing")
    p.done()
    if config.output_size % config.attention_heads:
        raise ModelError(f"{path}: flow.encoder.output_size must be a multiple of attention_heads")
    return config


def _regulator_config(node: Any, path: Path) -> tuple[int, int]:
    p = _Params(node, "InterpolateRegulator", path, "flow.length_regulator")
    channels = p.int("channels")
    ratios = p.ints("sampling_ratios")
    p.require("out_channels", (None, channels), None)
    p.require("groups", 1, 1)
    p.done()
    return channels, len(ratios)


def _cfm_params(node: Any, path: Path) -> tuple[float, float]:
    where = "flow.decoder.cfm_params"
    if isinstance(node, Tagged) and node.class_name == "DictConfig":
        node = node.kwargs.get("content", node.args[0] if node.args else None)
    if not isinstance(node, dict):
        raise ModelError(f"{path}: {where}: expected a mapping of solver parameters")
    p = _Params(Tagged("new", "DictConfig", dict(node)), "DictConfig", path, where)
    sigma_min = p.float("sigma_min")
    p.require("solver", "euler")
    p.require("t_scheduler", "cosine")
    cfg_rate = p.float("inference_cfg_rate")
    p.ignore("training_cfg_rate", "reg_loss_type")
    p.done()
    return sigma_min, cfg_rate


def _estimator_config(node: Any, path: Path) -> EstimatorConfig:
    p = _Params(node, "ConditionalDecoder", path, "flow.decoder.estimator")
    config = EstimatorConfig(
        in_channels=p.int("in_channels"), out_channels=p.int("out_channels"),
        channels=p.ints("channels"), attention_head_dim=p.int("attention_head_dim", 64),
        n_blocks=p.int("n_blocks", 1), num_mid_blocks=p.int("num_mid_blocks", 2),
        num_heads=p.int("num_heads", 4),
    )
    p.require("act_fn", "gelu")
    p.ignore("dropout")
    p.done()
    if not config.channels:
        raise ModelError(f"{path}: flow.decoder.estimator.channels: expected at least one width")
    return config


def _hift_config(node: Any, path: Path) -> HiftConfig:
    p = _Params(node, "HiFTGenerator", path, "hift")
    f0 = _Params(p.raw("f0_predictor"), "ConvRNNF0Predictor", path, "hift.f0_predictor")
    f0_num_class, f0_in, f0_cond = f0.int("num_class", 1), f0.int("in_channels", 80), f0.int("cond_channels", 512)
    f0.done()
    istft = p.raw("istft_params")
    if not isinstance(istft, dict) or set(istft) != {"n_fft", "hop_len"}:
        raise ModelError(f"{path}: hift.istft_params: expected n_fft and hop_len")
    config = HiftConfig(
        in_channels=p.int("in_channels"), base_channels=p.int("base_channels"),
        nb_harmonics=p.int("nb_harmonics"), sampling_rate=p.int("sampling_rate"),
        nsf_alpha=p.float("nsf_alpha"), nsf_sigma=p.float("nsf_sigma"),
        nsf_voiced_threshold=p.float("nsf_voiced_threshold"),
        upsample_rates=p.ints("upsample_rates"), upsample_kernel_sizes=p.ints("upsample_kernel_sizes"),
        n_fft=int(istft["n_fft"]), hop_len=int(istft["hop_len"]),
        resblock_kernel_sizes=p.ints("resblock_kernel_sizes"),
        resblock_dilation_sizes=p.int_lists("resblock_dilation_sizes"),
        source_resblock_kernel_sizes=p.ints("source_resblock_kernel_sizes"),
        source_resblock_dilation_sizes=p.int_lists("source_resblock_dilation_sizes"),
        lrelu_slope=p.float("lrelu_slope"), audio_limit=p.float("audio_limit"),
        f0_cond_channels=f0_cond, f0_num_class=f0_num_class,
    )
    p.done()
    if f0_in != config.in_channels or f0_num_class != 1:
        raise ModelError(f"{path}: hift.f0_predictor must take {config.in_channels} channels and predict 1 class")
    if len(config.upsample_rates) != len(config.upsample_kernel_sizes) or \
            len(config.source_resblock_kernel_sizes) != len(config.upsample_rates):
        raise ModelError(f"{path}: hift: upsample and source resblock lists must have equal lengths")
    return config
