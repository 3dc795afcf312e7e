"""The transformer's whole forward replayed as one CUDA graph (GPU speed path, with compile).

Why: a compiled FLUX block still launches ~30 kernels from Python, and an opaque op such as the cuDNN fp8
attention (services/image/attention_fp8.py) adds a few hundred microseconds of host work per call. Once fp8
made the GPU work small, the host became the bottleneck: one FLUX fp8 forward took 95.4 ms for 80.4 ms of
kernels on an H100 (benchmarks/image_gpu_profile.py). Replaying a captured graph costs the host almost
nothing, so the GPU runs back to back.

How: the first call with a new input signature (shapes, dtypes, non-tensor arguments) runs normally, which
compiles and builds every kernel; the second captures a graph with static input buffers; later calls copy
their inputs in, replay, and get a copy of the outputs. Graphs are kept per signature, least recently used
first out, since each holds its activations' memory. Anything unusual (grad mode, an output that is not
tensors, a failed capture) runs the plain forward, so a graph can make a call faster but never different.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("image.cuda_graphs")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static buffers, by argument name
    output: tuple[torch.Tensor, ...]


def _signature(kwargs: dict[str, Any]) -> tuple | None:
    """What a graph is specialised on; None when some argument cannot be part of a graph."""
    sig = []
    for name, value in sorted(kwargs.items()):
        if isinstance(value, torch.Tensor):
            if not value.is_cuda:
                return None
            sig.append((name, tuple(value.shape), value.stride(), value.dtype, value.device))
        elif _plain(value):
            sig.append((name, _frozen(value)))
        else:  # control-net residual lists, attention masks in a dict...: not graphed
            return None
    return tuple(sig)


def _plain(value: Any) -> bool:
    if isinstance(value, dict):  # joint_attention_kwargs: {} from every pipeline call
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def _frozen(value: Any) -> Any:
    return tuple(sorted((k, _frozen(v)) for k, v in value.items())) if isinstance(value, dict) else value


class GraphedForward:
    """Callable that stands in for a module's forward (keyword arguments only, as diffusers' pipelines
    call their transformers)."""

    def __init__(self, forward: Callable[..., Any], max_graphs: int = 4) -> None:
        self.forward = forward
        self.max_graphs = max_graphs
        self.graphs: collections.OrderedDict[tuple, _Graph] = collections.OrderedDict()
        self.seen: set[tuple] = set()
        self.refused: set[tuple] = set()
        self.replays = 0

    def reset(self) -> None:
        """Forget every graph (after the forward's code changed, e.g. another attention kernel)."""
        self.graphs.clear()
        self.seen.clear()
        self.refused.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = None if args or torch.is_grad_enabled() else _signature(kwargs)
        if key is None or key in self.refused or torch.cuda.is_current_stream_capturing():
            return self.forward(*args, **kwargs)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:  # first call: compile and build kernels outside any capture
                self.seen.add(key)
                return self.forward(**kwargs)
            entry = self._capture(key, kwargs)
            if entry is None:
                return self.forward(**kwargs)
        self.graphs.move_to_end(key)
        for name, buf in entry.inputs.items():
            buf.copy_(kwargs[name])
        entry.graph.replay()
        self.replays += 1
        return tuple(t.clone() for t in entry.output)

    def _capture(self, key: tuple, kwargs: dict[str, Any]) -> _Graph | None:
        inputs = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        static = {**kwargs, **inputs}
        try:
            # one more run on a side stream first, as PyTorch's capture recipe asks (lazy state settles)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.forward(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.forward(**static)
        except Exception:  # something in the forward cannot be captured: this signature stays eager
            log.exception("CUDA graph capture failed; this input signature runs without one")
            self.refused.add(key)
            return None
        if isinstance(out, torch.Tensor):
            out = (out,)
        if not isinstance(out, tuple | list) or not all(isinstance(t, torch.Tensor) for t in out):
            self.refused.add(key)
            return None
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        entry = _Graph(graph, inputs, tuple(out))
        self.graphs[key] = entry
        log.info("captured a CUDA graph of the transformer for %s", [k[:2] for k in key if len(k) > 2])
        return entry


def install(module: torch.nn.Module, max_graphs: int = 4) -> GraphedForward:
    """Replace the module's forward (an instance attribute; deleting it restores the class's)."""
    graphed = GraphedForward(module.forward, max_graphs)
    module.forward = graphed
    return graphed
