"""The transformer's whole forward, and each text encoder's, replayed as one CUDA graph (GPU speed path, with
compile).

Why: a compiled FLUX block still launches ~30 kernels from Python, and an opaque op such as the cuDNN fp8
attention (services/image/attention_fp8.py) adds a few hundred microseconds of host work per call. Once fp8
made the GPU work small, the host became the bottleneck: one FLUX fp8 forward took 95.4 ms for 80.4 ms of
kernels on an H100 (benchmarks/image_gpu_profile.py). Replaying a captured graph costs the host almost
nothing, so the GPU runs back to back. The text encoders (CLIP + T5-XXL for FLUX) run once per image; compiled
and graphed they take 21 ms of it, against 37-50 ms eagerly, mostly launches (benchmarks/image_gpu_other.py).

How: the first call with a new input signature (shapes, dtypes, non-tensor arguments) runs normally, which
compiles and builds every kernel; the second captures a graph with static input buffers; later calls copy
their inputs in, replay, and get a copy of the outputs. Graphs are kept per signature, least recently used
first out, since each holds its activations' memory. Anything unusual (grad mode, an output that is not
tensors, a failed capture) runs the plain forward, so a graph can make a call faster but never different.
"""

from __future__ import annotations

import collections
import inspect
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
    output: Any  # the forward's own output (a tensor, a tuple of them, or a transformers ModelOutput)

    def result(self) -> Any:
        """A copy of the static output, in the forward's own type (the next replay overwrites the buffers)."""
        out = self.output
        if isinstance(out, torch.Tensor):
            return out.clone()
        if isinstance(out, dict):  # transformers' ModelOutput: callers read fields by name or index
            return type(out)(**{k: v.clone() for k, v in out.items()})
        return type(out)(t.clone() for t in out)


def _tensors_only(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    values = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else None
    return values is not None and all(isinstance(t, torch.Tensor) for t in values)


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
    """Callable that stands in for a module's forward: the transformer's, which pipelines call with keyword
    arguments, or a text encoder's, which they call with the token ids first."""

    def __init__(self, forward: Callable[..., Any], max_graphs: int = 4) -> None:
        self.forward = forward
        self.signature = inspect.signature(forward)
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

    def _by_name(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """Every argument by its parameter name; None when the forward takes *args."""
        if not args:
            return kwargs
        try:
            bound = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None
        named: dict[str, Any] = {}
        for name, value in bound.items():
            kind = self.signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:  # transformers' **kwargs (output_hidden_states=...)
                named.update(value)
            elif kind == inspect.Parameter.VAR_POSITIONAL:
                return None
            else:
                named[name] = value
        return named

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        named = None if torch.is_grad_enabled() else self._by_name(args, kwargs)
        key = None if named is None else _signature(named)
        if key is None or key in self.refused or torch.cuda.is_current_stream_capturing():
            return self.forward(*args, **kwargs)
        kwargs = named
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
        return entry.result()

    def _capture(self, key: tuple, kwargs: dict[str, Any]) -> _Graph | None:
        inputs = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        static = {**kwargs, **inputs}
        rng = [(g, g.clone_state()) for g in torch.cuda.default_generators]
        try:
            # one more run on a side stream first, as PyTorch's capture recipe asks (lazy state settles)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.forward(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Compiling inside a capture cannot work (inductor reads values back): a forward that would
            # recompile here fails at once, cleanly, and stays uncaptured.
            with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(graph):
                out = self.forward(**static)
        except Exception as e:  # something in the forward cannot be captured (a host sync): stays eager
            for generator, state in rng:  # an aborted capture leaves the CUDA RNG in capture mode
                generator.graphsafe_set_state(state)
            log.warning("no CUDA graph for %s: %s: %s", getattr(self.forward, "__qualname__", "a forward"),
                        type(e).__name__, str(e)[:200])
            self.refused.add(key)
            return None
        if not _tensors_only(out):
            self.refused.add(key)
            return None
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        entry = _Graph(graph, inputs, out)
        self.graphs[key] = entry
        log.info("captured a CUDA graph of %s for %s", getattr(self.forward, "__qualname__", "a forward"),
                 [k[:2] for k in key if len(k) > 2])
        return entry


def install(module: torch.nn.Module, max_graphs: int = 4) -> GraphedForward:
    """Replace the module's forward (an instance attribute; deleting it restores the class's)."""
    graphed = GraphedForward(module.forward, max_graphs)
    module.forward = graphed
    return graphed
