"""Decoding on a static key/value cache: fixed addresses and shapes, so that the one-token step can
be captured once as a CUDA graph (or compiled) and replayed for every later token.

A dynamic cache grows by concatenation, so every step allocates and the step's many small kernels
are launched one by one from Python; on a GPU that launch overhead, not the arithmetic, sets the
time per token of a 9B model at batch one. Here the cache is allocated once for ``max_tokens``,
each step writes its key and value in place, and the step's inputs live in fixed buffers.

Works with transformers 4.57 (the cache writes where ``cache_position`` says) and 5.x (the cache
counts the tokens it has seen itself; ``cache_position`` is gone). Runs under ``no_grad`` rather than
``inference_mode``: the cache's tensors are cleared in place between sequences, which inference
tensors do not allow outside inference mode.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import GlmForCausalLM

StepMode = Literal["eager", "cuda-graph", "compile"]


class StaticDecoder:
    """Prefill then one token at a time, for one sequence of at most ``max_tokens`` tokens.

    ``mode``: "eager" runs the step as ordinary PyTorch; "cuda-graph" captures it once (CUDA only)
    and replays it; "compile" uses torch.compile's "reduce-overhead" mode (CUDA graphs through
    Inductor). Logits come back as float32 1-D tensors of the vocabulary size.
    """

    def __init__(self, model: GlmForCausalLM, max_tokens: int, mode: StepMode = "eager"):
        import torch

        self.model = model
        self.device = model.lm_head.weight.device
        self.max_tokens = max_tokens
        self.mode = mode
        if mode != "eager" and self.device.type != "cuda":
            raise ValueError(f"step mode {mode!r} needs a CUDA device")
        self.cache = _static_cache(model, max_tokens)
        self.length = 0
        # 4.x writes the cache where cache_position says; 5.x counts tokens in the cache itself
        self._takes_cache_position = "cache_position" in inspect.signature(type(model.model).forward).parameters
        self._token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._position = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self._compiled = None

    def reset(self) -> None:
        """Forget every token (the buffers, and a captured graph, stay where they are)."""
        self.cache.reset()
        self.length = 0

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Compute ``ids`` after the tokens already in the cache; the logits after the last one."""
        import torch

        if self.length + len(ids) > self.max_tokens:
            raise ValueError(f"{self.length + len(ids)} tokens do not fit a static cache of {self.max_tokens}")
        positions = torch.arange(self.length, self.length + len(ids), device=self.device).unsqueeze(0)
        with torch.no_grad():
            logits = self._forward(torch.tensor([ids], device=self.device), positions)
        self.length += len(ids)
        return logits[0, -1].to(torch.float32, copy=True)

    def step(self, token: int) -> torch.Tensor:
        """Feed one token; the logits for the next."""
        import torch

        if self.length >= self.max_tokens:
            raise ValueError(f"the static cache of {self.max_tokens} tokens is full")
        self._token.fill_(token)  # a kernel argument, no host-device copy
        self._position.fill_(self.length)
        with torch.no_grad():
            if self.mode == "cuda-graph":
                if self._graph is None:
                    raise RuntimeError("call prepare() before decoding with a CUDA graph")
                self._graph.replay()
                logits = self._graph_logits
            elif self.mode == "compile":
                if self._compiled is None:
                    self._compiled = torch.compile(self._forward, mode="reduce-overhead", dynamic=False)
                logits = self._compiled(self._token, self._position)
            else:
                logits = self._forward(self._token, self._position)
        self.length += 1
        return logits[0, -1].to(torch.float32, copy=True)  # a copy: replays overwrite the output buffer

    def prepare(self) -> None:
        """Do the one-off work of the step mode now (set-up, capture or compilation) and start empty.
        The cache's first use allocates it, so this runs a step of each kind first."""
        import torch

        self.reset()
        self.prefill([0, 0])  # allocates the cache
        if self.mode == "cuda-graph":
            self._capture()
        else:
            for _ in range(3 if self.mode == "compile" else 1):  # reduce-overhead records after a first run
                self.step(0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.reset()

    # --- internals --------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        extra = {"cache_position": positions[0]} if self._takes_cache_position else {}
        out = self.model(input_ids=ids, position_ids=positions, past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1, **extra)
        return out.logits

    def _capture(self) -> None:
        """Run the step twice on a side stream (lazy set-up must not happen inside the capture) and
        record it; what the rehearsal wrote into the cache is cleared by the caller."""
        import torch

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(self._token, self._position)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._graph_logits = self._forward(self._token, self._position)
        self._graph = graph


def _static_cache(model: GlmForCausalLM, max_tokens: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_tokens)
