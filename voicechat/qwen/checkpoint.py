"""Loading a Qwen2.5-Omni checkpoint (Hugging Face format) strictly, and the parts the engine runs.

The folder holds config.json (model_type qwen2_5_omni), model.safetensors or shards with an
index, spk_dict.pt, the tokenizer files and preprocessor_config.json. transformers builds the
model natively (no remote code). Before it loads anything, the tensors' names and shapes are read
from the safetensors headers and checked against the model the config describes, so a missing or
mis-shaped tensor is one clear line instead of a silently random weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicechat.errors import ModelError

MODEL_TYPE = "qwen2_5_omni"
SPEAKERS_FILE = "spk_dict.pt"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SPEAKER = "Chelsie"


@dataclass
class LoadedOmni:
    model: Any  # Qwen2_5OmniForConditionalGeneration
    speakers: dict[str, dict[str, Any]]
    folder: Path


def read_config(folder: Path) -> Any:
    from transformers import Qwen2_5OmniConfig

    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder}: no config.json; is this a Qwen2.5-Omni checkpoint folder?") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: unreadable ({error})") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind != MODEL_TYPE:
        raise ModelError(f"{path}: model_type is {kind!r}, not {MODEL_TYPE!r}: this is not a Qwen2.5-Omni "
                         "checkpoint (check models.omni.source)")
    try:
        text = data["thinker_config"]["text_config"]
        rope = dict(text.get("rope_scaling") or {})
    except (KeyError, TypeError, AttributeError):
        raise ModelError(f"{path}: no thinker_config.text_config; is this a complete Qwen2.5-Omni config?") from None
    # transformers 4.57 validates the thinker's rope_scaling without knowing its mrope_section and
    # warns about every published checkpoint; it is validated without it and set again after.
    sections = rope.pop("mrope_section", None)
    text["rope_scaling"] = rope or None
    try:
        config = Qwen2_5OmniConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelError(f"{path}: invalid Qwen2.5-Omni config ({error})") from None
    if sections is not None:
        config.thinker_config.text_config.rope_scaling["mrope_section"] = sections
    return config


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    index = folder / INDEX_FILE
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"{index}: unreadable shard index ({error})") from None
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (OSError, ValueError, RuntimeError) as error:  # safetensors' own errors are these
            raise ModelError(f"{folder / name}: unreadable weights ({str(error).splitlines()[0]})") from None
    return shapes


def check_tensors(config: Any, found: dict[str, tuple[int, ...]], folder: Path) -> None:
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = set()
    if getattr(config.thinker_config.text_config, "tie_word_embeddings", False):
        tied.add("thinker.lm_head.weight")
    for name, shape in expected.items():
        if name not in found and name not in tied:
            raise ModelError(f"{folder}: the checkpoint lacks the tensor {name} (shape {list(shape)}); "
                             "the download is incomplete or it is another model")
        if name in found and found[name] != shape:
            raise ModelError(f"{folder}: tensor {name} has shape {list(found[name])}, the config needs "
                             f"{list(shape)}; the weights do not match config.json")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ModelError(f"{folder}: unexpected tensor {extra[0]} (and {len(extra) - 1} more); "
                         "the weights do not match config.json")


def load_omni(folder: Path, device: str = "auto", dtype: str = "auto") -> LoadedOmni:
    import torch

    from voicechat.placement import resolve_device, resolve_dtype

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such Qwen2.5-Omni folder")
    config = read_config(folder)
    check_tensors(config, checkpoint_shapes(folder), folder)
    if not (folder / SPEAKERS_FILE).is_file():
        raise ModelError(f"{folder}: no {SPEAKERS_FILE} (the speakers' voices); the download is incomplete")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, gpu_default="bfloat16")
    from transformers import Qwen2_5OmniForConditionalGeneration

    try:
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(folder), config=config, local_files_only=True, trust_remote_code=False, dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{folder}: cannot load Qwen2.5-Omni ({str(error).splitlines()[0]})") from None
    model.token2wav.float()  # token2wav runs in float32, as transformers' generate does
    model = model.to(torch_device).eval()
    speakers = read_speakers(model.speaker_map, folder)
    return LoadedOmni(model, speakers, folder)


def read_speakers(speaker_map: dict, folder: Path) -> dict[str, dict[str, Any]]:
    if not speaker_map:
        raise ModelError(f"{folder / SPEAKERS_FILE}: no speakers")
    for name, entry in speaker_map.items():
        if not isinstance(entry, dict) or not {"bos_token", "cond", "ref_mel"} <= set(entry):
            raise ModelError(f"{folder / SPEAKERS_FILE}: speaker {name!r} lacks bos_token, cond or ref_mel")
    return dict(speaker_map)
