"""CUDA graphs for the flow's velocity estimator, the U-Net run twice per Euler step (conditional and
unconditional, as one batch of two) and ten steps per chunk.

A chunk's estimator calls all have the same input shape, and a reply's chunks come in a few shapes
(set by the chunk schedule and the context), so each shape is captured once and every later call
with that shape is one replay instead of some hundreds of kernel launches. Inputs are copied into
the graph's own buffers; the output is copied out, so a caller may keep it.

Shapes are captured on first use until ``freeze()``; after it (the decoder's warm-up freezes once it
has seen the shapes every reply's chunks have) a new shape, such as a reply's last chunk, runs
without a graph rather than paying for a capture it would rarely reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MAX_GRAPHS = 64  # shapes beyond this many run without a graph (each graph keeps its own memory)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class GraphedEstimator:
    """Callable like the estimator: (x, mu, t, spks, cond) -> velocity. CUDA only."""

    def __init__(self, estimator: nn.Module):
        device = next(estimator.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA graphs need the decoder on a CUDA device")
        self.estimator = estimator
        self.device = device
        self.frozen = False
        self._captured: dict[tuple, _Captured] = {}

    def freeze(self) -> None:
        """Capture no new shapes from now on."""
        self.frozen = True

    @property
    def shapes(self) -> int:
        """How many input shapes have a graph."""
        return len(self._captured)

    def __call__(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                 cond: torch.Tensor) -> torch.Tensor:
        inputs = (x, mu, t.reshape(()), spks, cond)
        key = tuple((tuple(a.shape), a.dtype) for a in inputs)
        captured = self._captured.get(key)
        if captured is None:
            if self.frozen or len(self._captured) >= MAX_GRAPHS:
                return self.estimator(*inputs)
            captured = self._captured[key] = self._capture(inputs)
        for buffer, value in zip(captured.inputs, inputs):
            buffer.copy_(value)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        """Rehearse on a side stream (first calls set up kernels and workspaces), then record."""
        buffers = tuple(a.detach().clone() for a in inputs)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(2):
                self.estimator(*buffers)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            output = self.estimator(*buffers)
        return _Captured(graph, buffers, output)
