"""Attention on Hopper through CUTLASS's warp-specialized FMHA (services/image/csrc/fmha.cu), bf16 or fp8.

Why: at the image transformers' shape (24 heads x 4608 tokens x 128) PyTorch's best kernel (cuDNN's) runs
at about 595 TFLOP/s on an H100; CUTLASS's ping-pong kernel at 650 in bf16 and about 800 with e4m3 inputs
(benchmarks/image_gpu_attention.py). Attention is a quarter to a third of a step, so this is the largest
lever left once the matmuls run at cuBLAS speed.

The library is built by services/image/csrc/build.sh (the Dockerfile's builder stage runs it) and loaded
with ctypes, so nothing depends on PyTorch's C++ ABI; `fmha` wraps it as a custom op that a compiled block
sees as one opaque call. Without the library, or without a Hopper GPU, `available()` says why and the speed
path keeps PyTorch's attention.

fp8 (only with the config's lossy `fp8` flag): Q and K are RMS-normalised before RoPE, so every element is
at most sqrt(head_dim) * max|norm weight| in magnitude; one static scale from that bound (taken over the whole
model, so all blocks share one compiled graph) maps them into e4m3 without overflow, and folds into the
softmax scale. V has no such bound: it gets a scale per (batch, head) from its absolute maximum, is written
transposed (Hopper's fp8 tensor cores need the token dimension contiguous), and the output is multiplied by
that scale afterwards. Inductor fuses these casts into the kernels that produce Q, K and V.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("image.fmha")

LIBRARY_ENV = "IMAGE_FMHA_LIBRARY"
DEFAULT_LIBRARY = Path(__file__).parent / "csrc" / "build" / "libmodelplat_fmha.so"
HEAD_DIM = 128
KV_TILE = 128  # key/value tokens per tile; 1024px images have 4608 (FLUX) or 4352 (Ovis) tokens, multiples
E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
KINDS = {"bf16 ping-pong": 0, "bf16 cooperative": 1, "fp8 ping-pong": 2, "fp8 cooperative": 3}


def library_path() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded library, or why there is none."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return "CUTLASS FMHA needs a Hopper GPU (compute capability 9.0)"
    path = library_path()
    if not path.exists():
        return f"no FMHA library at {path} (build it with services/image/csrc/build.sh or set {LIBRARY_ENV})"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return f"FMHA library {path} did not load: {e}"
    lib.modelplat_fmha_fwd.restype = ctypes.c_int
    lib.modelplat_fmha_fwd.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [
        ctypes.POINTER(ctypes.c_longlong), ctypes.c_float, ctypes.c_void_p]
    return lib


def available() -> str | None:
    """None when the kernel can run here, else the reason it cannot."""
    lib = _library()
    return lib if isinstance(lib, str) else None


@torch.library.custom_op("modelplat_image::fmha", mutates_args=())
def fmha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, kind: int) -> torch.Tensor:
    """softmax(q k^T * scale) v over (batch, seq, heads, 128) q and k; v the same layout in bf16, or
    (batch, heads, 128, seq) contiguous for e4m3 kinds. Token and batch strides are free (views of a fused
    QKV projection need no copy); heads must be 128 apart and dims contiguous. bf16
    (batch, seq_q, heads, 128) out."""
    lib = _library()
    if isinstance(lib, str):
        raise RuntimeError(lib)
    b, s_q, h, d = q.shape
    s_k = k.shape[1]
    bshd = [q, k] + ([] if kind >= 2 else [v])
    bad_v = kind >= 2 and not v.is_contiguous()
    if d != HEAD_DIM or any(t.stride(3) != 1 or t.stride(2) != d for t in bshd) or bad_v:
        raise ValueError(f"FMHA takes (batch, seq, heads, {HEAD_DIM}) tensors with heads {HEAD_DIM} apart")
    out = torch.empty(b, s_q, h, d, device=q.device, dtype=torch.bfloat16)
    lse = torch.empty(b, h, s_q, device=q.device, dtype=torch.float32)
    strides = (ctypes.c_longlong * 6)(q.stride(1), q.stride(0), k.stride(1), k.stride(0), v.stride(1), v.stride(0))
    stream = torch.cuda.current_stream(q.device).cuda_stream
    status = lib.modelplat_fmha_fwd(kind, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
                                    b, h, s_q, s_k, strides, scale, stream)
    if status:
        raise RuntimeError(f"FMHA kernel {kind} refused {tuple(q.shape)} x {tuple(k.shape)} (status {status})")
    return out


@fmha.register_fake
def _(q, k, v, scale, kind):
    return q.new_empty(q.shape, dtype=torch.bfloat16)


def qk_bound(transformer: torch.nn.Module) -> float | None:
    """sqrt(head_dim) * the largest |weight| of any Q/K RMS norm: no element of a normalised, rotated Q or K
    can exceed it. None when some attention has no such norm (then fp8 attention is not safe)."""
    bound = 0.0
    for module in transformer.modules():
        if not hasattr(module, "norm_q"):
            continue
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            norm = getattr(module, name, None)
            if norm is None:
                continue
            weight = getattr(norm, "weight", None)
            if weight is None or not isinstance(norm, torch.nn.RMSNorm | _diffusers_rmsnorm()):
                return None
            bound = max(bound, float(weight.detach().abs().max()))
    return math.sqrt(HEAD_DIM) * bound if bound else None


def _diffusers_rmsnorm() -> type:
    from diffusers.models.normalization import RMSNorm

    return RMSNorm


def quantize_qk(x: torch.Tensor, qk_scale: float) -> torch.Tensor:
    return (x.float() * (1.0 / qk_scale)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 V transposed to (batch, heads, dim, seq), and its (batch, 1, heads, 1) scale."""
    scale = v.abs().amax(dim=(1, 3), keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (v.float() / scale).to(E4M3).permute(0, 2, 3, 1).contiguous(), scale


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kind: int,
              qk_scale: float | None = None) -> torch.Tensor:
    """Diffusers' (batch, seq, heads, dim) attention with the default 1/sqrt(dim) softmax scale."""
    softmax_scale = HEAD_DIM**-0.5
    if key.shape[1] % KV_TILE:  # the kernel has no mask for a partial key tile: PyTorch's attention instead
        return torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
    if kind < 2:
        return fmha(query, key, value, softmax_scale, kind)
    v8, v_scale = quantize_v(value)
    out = fmha(quantize_qk(query, qk_scale), quantize_qk(key, qk_scale), v8, softmax_scale * qk_scale**2, kind)
    return (out * v_scale).to(query.dtype)


def reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, fp8: bool,
              qk_scale: float | None = None) -> torch.Tensor:
    """What `attention` computes, on any device: the same quantisation, then float32 attention. Lets the
    CPU tests check the fp8 arithmetic that the GPU kernel implements."""
    q, k, v = query, key, value
    if fp8:
        q = quantize_qk(query, qk_scale).float() * qk_scale
        k = quantize_qk(key, qk_scale).float() * qk_scale
        v8, v_scale = quantize_v(value)
        v = v8.permute(0, 3, 1, 2).float() * v_scale
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2))
    return out.transpose(1, 2).to(query.dtype)


@dataclass(frozen=True)
class Backend:
    """What an attention processor runs instead of diffusers' dispatch: a kernel kind (see KINDS) and, for
    fp8 kinds, the static Q/K scale."""

    kind: int
    qk_scale: float | None = None


def _dispatcher(original: Callable) -> Callable:
    def dispatch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *args,
                 backend=None, **kwargs):
        if not isinstance(backend, Backend):
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, backend=backend,
                            **kwargs)
        if attn_mask is None and dropout_p == 0.0 and not is_causal and scale is None:
            return attention(query, key, value, backend.kind, backend.qk_scale)
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, backend="native",
                        **kwargs)

    dispatch.modelplat_original = original
    return dispatch


def install(transformer: torch.nn.Module, backend: Backend) -> int:
    """Route every attention processor of the transformer to the kernel; returns how many. The processors
    call diffusers' dispatch_attention_fn through their module's globals, so that name is wrapped there
    (once): calls whose backend is not ours, or that need a mask, go to diffusers unchanged."""
    count = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(processor, "_attention_backend"):
            continue
        owner = sys.modules[type(processor).__module__]
        current = getattr(owner, "dispatch_attention_fn", None)
        if current is None:
            continue
        if not hasattr(current, "modelplat_original"):
            owner.dispatch_attention_fn = _dispatcher(current)
        processor._attention_backend = backend
        count += 1
    return count
