"""Ovis true CFG with the conditional and unconditional passes in ONE transformer forward.

OvisImagePipeline calls its transformer twice per step (prompt, then negative prompt) with the same
latents and timestep. Inside `paired(pipe)`, the first of those calls runs both as a batch of 2B and
returns the conditional half; the second call, recognised by identity (same latents object, the negative
embeddings that encode_prompt returned), gets the stashed unconditional half without running the model.
Any call that does not match that pattern runs unchanged, so a pipeline change degrades to two passes,
never to wrong images. Whether it is faster depends on size: at 1024px on an H100 a forward is compute
bound and bs2 costs 2x bs1 (no gain); smaller images gain (see benchmarks/image_gpu.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class _Pairing:
    def __init__(self, pipe: Any) -> None:
        self.encode = pipe.encode_prompt
        self.forward = pipe.transformer.forward
        self.embeds: tuple[Any, ...] | None = None
        self.stash: tuple[torch.Tensor, torch.Tensor] | None = None
        self.paired_calls = 0

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        out = self.encode(*args, **kwargs)
        self.embeds = tuple(out)  # (prompt_embeds, negative_prompt_embeds, text_ids, negative_text_ids)
        return out

    def _pairable(self, kw: dict[str, Any]) -> bool:
        if self.embeds is None or kw.get("return_dict", True):
            return False
        pe, ne, tids, ntids = self.embeds
        return (ne is not None and kw.get("encoder_hidden_states") is pe and pe.shape == ne.shape
                and kw.get("txt_ids") is tids and torch.equal(tids, ntids))

    def transformer_forward(self, *args: Any, **kw: Any) -> Any:
        stash, self.stash = self.stash, None
        if stash is not None and not args and self.embeds is not None:
            latents, uncond = stash
            if kw.get("hidden_states") is latents and kw.get("encoder_hidden_states") is self.embeds[1]:
                return (uncond,)
        if args or not self._pairable(kw):
            return self.forward(*args, **kw)
        hs, pe, ne = kw["hidden_states"], self.embeds[0], self.embeds[1]
        both = dict(kw, hidden_states=torch.cat([hs, hs]), encoder_hidden_states=torch.cat([pe, ne]),
                    timestep=torch.cat([kw["timestep"], kw["timestep"]]))
        cond, uncond = self.forward(**both)[0].chunk(2)
        self.stash = (hs, uncond)
        self.paired_calls += 1
        return (cond,)


@contextlib.contextmanager
def paired(pipe: Any) -> Iterator[_Pairing]:
    """Patch one pipeline instance for the duration of one call (the engine runs one call at a time)."""
    pairing = _Pairing(pipe)
    # an instance-level forward already there (services/image/cuda_graphs.py) is wrapped, then put back
    previous = pipe.transformer.__dict__.get("forward")
    pipe.encode_prompt = pairing.encode_prompt
    pipe.transformer.forward = pairing.transformer_forward
    try:
        yield pairing
    finally:
        # removing the instance attributes restores the class methods
        del pipe.encode_prompt
        del pipe.transformer.forward
        if previous is not None:
            pipe.transformer.forward = previous
