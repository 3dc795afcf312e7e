"""FlashAttention-3 at the image transformers' shapes, for benchmarks/image_gpu_attention.py only: measured
on an H100 it was slower than cuDNN's attention (bf16 455 vs 595 TFLOP/s, fp8 no faster than its bf16), so
the service does not use it (benchmarks/image_gpu_results.md, session 3).

Why it was tried: PyTorch 2.11's attention kernels reach about 590 TFLOP/s at FLUX's 1024px shape, and
cuDNN's fp8 path only 1.2-1.4x that; FA3's published figures are higher, but FA3 is not on PyPI. vLLM's wheel
ships it, built against the same torch and CUDA (vllm 0.20-0.26 pin torch 2.11.0 / CUDA 13): only that kernel
library (`_vllm_fa3_C.abi3.so`, variable-length entry only) is loaded, never the vllm package.
`IMAGE_FA3_LIBRARY` names the file; without it an installed vllm package is searched, without importing it.

The kernel is wrapped in a torch custom op with a fake implementation so that a compiled block sees one
opaque call and fuses the fp8 quantisation of Q, K and V into the RoPE/norm kernels that produce them.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

import torch

from services.image import fp8  # the repo root is on sys.path (image_gpu_attention.py puts it there)

log = logging.getLogger("image.fa3")

LIBRARY_ENV = "IMAGE_FA3_LIBRARY"
LIBRARY_NAME = "_vllm_fa3_C.abi3.so"
# FA3's forward takes these non-optional arguments besides q, k, v; every Optional one is passed as None.
# Keyed by the schema's names so a library with extra trailing optionals still binds.
_FIXED = {"is_causal": False, "window_size_left": -1, "window_size_right": -1, "softcap": 0.0,
          "is_rotary_interleaved": True, "num_splits": 0, "sm_margin": 0, "cp_world_size": 1, "cp_rank": 0}


def library_path() -> Path | None:
    """The FA3 kernel library: $IMAGE_FA3_LIBRARY, else inside an installed vllm package (found, not imported)."""
    if env := os.environ.get(LIBRARY_ENV):
        return Path(env)
    spec = importlib.util.find_spec("vllm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "vllm_flash_attn" / LIBRARY_NAME
        if path.exists():
            return path
    return None


@functools.cache
def load() -> str | None:
    """Load the library once; None when ready, else why not (no library, no Hopper GPU, ABI mismatch)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        return "FA3 needs a Hopper GPU (compute capability 9.x)"
    path = library_path()
    if path is None or not path.exists():
        return f"no FA3 library (set {LIBRARY_ENV} or install the vllm wheel matching this torch)"
    try:
        torch.ops.load_library(str(path))
        torch.ops._vllm_fa3_C.fwd.default  # noqa: B018 - raises if the library registered nothing
    except (OSError, RuntimeError, AttributeError) as e:
        return f"FA3 library {path} did not load: {e}"
    return None


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
             descales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    # vLLM builds only FA3's variable-length entry (for size): equal lengths as b sequences of s tokens
    op = torch.ops._vllm_fa3_C.fwd.default
    b, s, h, d = q.shape
    cu_seqlens = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
    flat = [x.reshape(b * s, x.shape[2], d) for x in (q, k, v)]
    given = {"q": flat[0], "k": flat[1], "v": flat[2], "softmax_scale": scale, "cu_seqlens_q": cu_seqlens,
             "cu_seqlens_k": cu_seqlens, "max_seqlen_q": s, "max_seqlen_k": s, **_FIXED}
    if descales is not None:
        given.update(zip(("q_descale", "k_descale", "v_descale"), descales, strict=True))
    args = {}
    for arg in op._schema.arguments:
        if arg.name in given:
            args[arg.name] = given[arg.name]
        elif isinstance(arg.type, torch.OptionalType):
            args[arg.name] = None
        else:
            raise RuntimeError(f"FA3 library has an unknown required argument {arg.name!r}")
    return op(**args)[0].view(b, s, h, -1)


@torch.library.custom_op("modelplat_image::fa3", mutates_args=())
def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
        q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
        v_descale: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over (batch, seq, heads, dim) tensors; bf16 in and out, or e4m3 in with (batch, heads)
    float32 descales and bf16 out."""
    descales = None if q_descale is None else (q_descale, k_descale, v_descale)
    return _forward(q, k, v, scale, descales)


@fa3.register_fake
def _(q, k, v, scale, q_descale=None, k_descale=None, v_descale=None):
    return torch.empty_like(q, dtype=torch.bfloat16 if q.dtype == torch.float8_e4m3fn else q.dtype)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 with one scale per (batch, head): FA3's descale granularity. Plain torch ops, so inductor fuses
    them into the kernel that produced x (RoPE and the RMS norms for Q and K)."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-6)  # (batch, heads)
    scaled = x.float() * (fp8.E4M3_MAX / amax)[:, None, :, None]
    return scaled.to(torch.float8_e4m3fn), (amax / fp8.E4M3_MAX).contiguous()


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, fp8: bool = False,
              scale: float | None = None) -> torch.Tensor:
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if not fp8:
        return fa3(query, key, value, scale)
    (q, dq), (k, dk), (v, dv) = quantize(query), quantize(key), quantize(value)
    return fa3(q, k, v, scale, dq, dk, dv).to(query.dtype)
