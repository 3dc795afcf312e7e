"""diffusers' rotary embedding with the pair partner taken by a flip (GPU speed path, with compile).

diffusers builds the rotated vector of FLUX's and Ovis' interleaved RoPE with unbind + stack. Compiled, that
becomes two masked loads per element inside the RMS-norm kernel that feeds it; the same values come from
one flip of the (pairs, 2) view, which inductor turns into a single unmasked load with an index. Same
products, same order: the output is bit for bit diffusers' (tested). Measured per FLUX single block,
norm + RoPE + fp8 casts of Q and K (benchmarks/image_gpu_qknorm.py): see benchmarks/image_gpu_results.md.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

_MODULES = ("diffusers.models.transformers.transformer_flux", "diffusers.models.transformers.transformer_ovis_image")


def apply_rotary_emb(x: torch.Tensor, freqs_cis: Any, use_real: bool = True, use_real_unbind_dim: int = -1,
                     sequence_dim: int = 2, *, original: Any = None) -> torch.Tensor:
    if not use_real or use_real_unbind_dim != -1 or sequence_dim not in (1, 2):
        return original(x, freqs_cis, use_real, use_real_unbind_dim, sequence_dim)
    cos, sin = freqs_cis  # [S, D]
    index = (None, slice(None), None) if sequence_dim == 1 else (None, None, slice(None))
    cos, sin = cos[index].to(x.device), sin[index].to(x.device)
    # (x0, x1) -> (-x1, x0) for every pair: flip the pair, negate its first element
    sign = torch.tensor([-1.0, 1.0], device=x.device, dtype=x.dtype)
    rotated = (x.unflatten(-1, (-1, 2)).flip(-1) * sign).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def install() -> int:
    """Use it in the FLUX and Ovis transformer modules (their attention processors call the name from their
    module's globals); returns how many modules now use it. Idempotent."""
    import functools

    count = 0
    for name in _MODULES:
        module = sys.modules.get(name)
        if module is None:
            __import__(name)
            module = sys.modules[name]
        current = getattr(module, "apply_rotary_emb", None)
        if current is None:
            continue
        if not getattr(current, "modelplat_flip", False):
            wrapped = functools.partial(apply_rotary_emb, original=current)
            wrapped.modelplat_flip = True
            module.apply_rotary_emb = wrapped
        count += 1
    return count
