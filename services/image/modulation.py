"""Every block's adaptive-norm modulation for all the steps of an image, in one matmul per image.

FLUX and Ovis shift, scale and gate each block from the timestep embedding: `Linear(silu(temb))` in every
adaptive norm (3072 -> 6 x 3072 twice in a double block, 3 x 3072 in a single block, 2 x 3072 at the end).
temb depends only on the timestep (and, in FLUX, the guidance scale and the pooled CLIP embedding), all known
before the first step. Yet each forward multiplies one row by all these weights: 6.5 GB for FLUX.1-dev, read
from memory at every step by matrix-vector kernels, 2.8 ms of a 125 ms bf16 forward on an H100
(`nvjet_*_256x8` / `_128x8` in benchmarks/image_gpu_profile.py, session 7).

Here the norms' weights are concatenated once. At an image's first forward, one matmul computes the rows of
every step of the scheduler's schedule (the weights are read once); each forward then copies its step's row
into the buffer the norms read: `Modulation` stands in for each norm's Linear and returns its slice, so the
compiled blocks and the CUDA graph only see a buffer. A forward finds its row by comparing the timestep it
was given with the table's, on the device (no host sync). The row for a timestep is the same function of it
whichever step it came from, so any match is right. A forward with no match would read a wrong row: each
forward records whether it matched, the engine checks once the image is done (it syncs there anyway), and
on a miss it logs, turns the tables off and makes the image again. Forwards outside a schedule (and ones with
other guidance or pooled tensors, such as a negative prompt's) compute their own rows, one matmul for all
norms. The rows equal the Linear layers' up to the matmuls' summation order.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


class Modulation(torch.nn.Module):
    """An adaptive norm's Linear, replaced: returns this forward's rows (batch, out_features), written
    beforehand into a shared buffer (`rows` is a view of it)."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.register_buffer("rows", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x = silu(temb): computed once per forward instead
        return self.rows


class StepModulation(torch.nn.Module):
    """The concatenated weights of every adaptive norm, and the per-batch-size buffers their rows go to."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, norms: list[Modulation]) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.norms = norms  # a plain list: they stay registered in their blocks only
        self.current: dict[int, torch.Tensor] = {}  # batch size -> (batch, total width); graphs read these
        self.batch: int | None = None  # whose buffer the norms' views point into
        self.enabled = True

    def rows(self, temb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(temb).to(self.weight.dtype), self.weight, self.bias)

    def buffer(self, batch: int) -> torch.Tensor:
        """The buffer for this batch size, with the norms pointing into it. Kept for good: a captured CUDA
        graph reads it at its address."""
        if batch not in self.current:
            with torch.inference_mode(False):  # updated in place later, in and out of inference mode
                self.current[batch] = self.weight.new_zeros(batch, self.weight.shape[0])
        cur = self.current[batch]
        if self.batch != batch:
            start = 0
            for norm in self.norms:
                norm.rows = cur[:, start:start + norm.out_features]
                start += norm.out_features
            self.batch = batch
        return cur


def temb(transformer: Any, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor | None,
         dtype: torch.dtype) -> torch.Tensor:
    """The timestep embedding exactly as the transformer's forward computes it (diffusers 0.42: FLUX's
    time_text_embed, Ovis' time_proj + timestep_embedder)."""
    t = timestep.to(dtype) * 1000
    if hasattr(transformer, "time_text_embed"):
        if guidance is None:
            return transformer.time_text_embed(t, pooled)
        return transformer.time_text_embed(t, guidance.to(dtype) * 1000, pooled)
    return transformer.timestep_embedder(transformer.time_proj(t).to(dtype))


class Schedule:
    """One pipeline call's table: the rows of every step, built at its first forward."""

    def __init__(self, transformer: Any, scheduler: Any) -> None:
        self.transformer, self.scheduler = transformer, scheduler
        self.table: torch.Tensor | None = None  # (steps, batch, total width)
        self.passed: torch.Tensor | None = None  # the timesteps as the pipeline passes them
        self.conditioning: tuple[Any, Any, int] | None = None
        self.hits: list[torch.Tensor] = []

    def _build(self, mod: StepModulation, kw: dict[str, Any], batch: int) -> None:
        timestep, guidance, pooled = kw["timestep"], kw.get("guidance"), kw.get("pooled_projections")
        # FLUX and Ovis pass `t.expand(batch).to(latents.dtype) / 1000` for each t of scheduler.timesteps
        passed = self.scheduler.timesteps.to(device=timestep.device, dtype=timestep.dtype) / 1000
        steps = passed.shape[0]
        emb = temb(self.transformer, passed.repeat_interleave(batch),
                   None if guidance is None else guidance.repeat(steps),
                   None if pooled is None else pooled.repeat(steps, 1), kw["hidden_states"].dtype)
        self.table = mod.rows(emb).view(steps, batch, -1)
        self.passed = passed
        self.conditioning = (guidance, pooled, batch)

    def select(self, mod: StepModulation, kw: dict[str, Any], cur: torch.Tensor) -> bool:
        """Copy this forward's rows into `cur`; False when this table cannot serve the forward."""
        batch = cur.shape[0]
        if self.table is None:
            if getattr(self.scheduler, "timesteps", None) is None:
                return False
            self._build(mod, kw, batch)
        guidance, pooled, b = self.conditioning
        if kw.get("guidance") is not guidance or kw.get("pooled_projections") is not pooled or batch != b:
            return False
        timestep = kw["timestep"]
        hit = self.passed == timestep[:1]
        cur.copy_(self.table.index_select(0, hit.float().argmax().view(1))[0])
        self.hits.append(hit.any() & (timestep == timestep[:1]).all())
        return True

    def missed(self) -> bool:
        """Whether some forward found no row (a device sync: call it after the image)."""
        return bool(self.hits) and not bool(torch.stack(self.hits).all())


class ScheduledForward:
    """The transformer's forward, after its norms' rows are in place (outside any CUDA graph it wraps)."""

    def __init__(self, mod: StepModulation, transformer: Any, inner: Any) -> None:
        self.mod, self.transformer, self.inner = mod, transformer, inner
        self.signature = inspect.signature(inner)
        self.schedule: Schedule | None = None

    def reset(self) -> None:  # ImageEngine.reset_compiled: the CUDA graphs beneath
        reset = getattr(self.inner, "reset", None)
        if reset is not None:
            reset()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kw = self.signature.bind_partial(*args, **kwargs).arguments if args else kwargs
        hs = kw["hidden_states"]
        with torch.no_grad():
            cur = self.mod.buffer(hs.shape[0])
            sched = self.schedule if self.mod.enabled else None
            if sched is None or not sched.select(self.mod, kw, cur):
                cur.copy_(self.mod.rows(temb(self.transformer, kw["timestep"], kw.get("guidance"),
                                             kw.get("pooled_projections"), hs.dtype)))
        return self.inner(*args, **kwargs)


def _norm_linears(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle

    kinds = (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)
    return [m for m in transformer.modules() if isinstance(m, kinds) and type(m.linear) is torch.nn.Linear]


def install(transformer: torch.nn.Module) -> StepModulation | None:
    """Replace the adaptive norms' Linear layers and wrap the forward (last: around any CUDA graph); returns
    the tables, or None for a transformer this does not know (then nothing changes)."""
    if not (hasattr(transformer, "time_text_embed") or hasattr(transformer, "timestep_embedder")):
        return None
    if isinstance(transformer.__dict__.get("forward"), ScheduledForward):
        return transformer.step_modulation
    norms = _norm_linears(transformer)
    if not norms or any(n.linear.bias is None for n in norms):
        return None
    first = norms[0].linear.weight
    total = sum(n.linear.out_features for n in norms)
    with torch.no_grad():
        weight = first.new_empty(total, first.shape[1])
        bias = first.new_empty(total)
        stand_ins, start = [], 0
        for norm in norms:  # copied one by one, each Linear freed as it goes: no second full copy at once
            lin, stand_in = norm.linear, Modulation(norm.linear.out_features)
            weight[start:start + lin.out_features].copy_(lin.weight)
            bias[start:start + lin.out_features].copy_(lin.bias)
            start += lin.out_features
            norm.linear = stand_in
            stand_ins.append(stand_in)
    mod = StepModulation(weight, bias, stand_ins)
    transformer.step_modulation = mod
    transformer.forward = ScheduledForward(mod, transformer, transformer.forward)
    return mod


@contextlib.contextmanager
def schedule(pipe: Any) -> Iterator[Schedule | None]:
    """Tables for one pipeline call (the engine runs one call at a time); yields None when not installed."""
    fwd = pipe.transformer.__dict__.get("forward")
    if not isinstance(fwd, ScheduledForward) or not fwd.mod.enabled:
        yield None
        return
    fwd.schedule = sched = Schedule(pipe.transformer, pipe.scheduler)
    try:
        yield sched
    finally:
        fwd.schedule = None
