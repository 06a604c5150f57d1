"""Where a model runs: the torch device and dtype named in a model's config entry, and how many CPU
threads it may use."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from voicechat.errors import ModelError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")


def set_cpu_threads(count: int) -> None:
    """PyTorch's intra-op threads for this process (``runtime.threads``, ``--threads``). On a
    machine shared with other work, fewer threads than cores keep a model from fighting over a busy
    core. PyTorch reads OMP_NUM_THREADS when it is imported, so setting a number costs no import
    here; a PyTorch already imported is told directly."""
    os.environ["OMP_NUM_THREADS"] = str(count)  # faiss's OpenMP reads it too
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)


def resolve_device(name: "str | torch.device") -> "torch.device":
    """"auto" is the first CUDA GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} was requested but no CUDA GPU is available; use device: cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"device {name!r} does not exist; {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' was requested but is not available; use cpu")
    return device


def resolve_dtype(name: "str | torch.dtype", device: "torch.device",
                  gpu_default: str = "float32") -> "torch.dtype":
    """"auto" is float32 on the CPU and ``gpu_default`` on a GPU (each model knows what it
    tolerates)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        name = gpu_default if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return getattr(torch, name)
