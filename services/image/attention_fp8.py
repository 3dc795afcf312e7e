"""fp8 attention on Hopper through cuDNN's fp8 SDPA (the cudnn-frontend graph API): the lossy `fp8` mode's
attention, routed into diffusers' processors.

Why: at the image transformers' 1024px shapes cuDNN's fp8 kernel runs at 908-943 TFLOP/s on an H100 against
644 for its bf16 kernel (benchmarks/image_gpu_attention.py, calls back to back), and attention is about a
third of a FLUX step. What used to eat the gain was the quantisation around the kernel; here none of it is a
pass of its own except one small reduction:
- Q and K are RMS-normalised before RoPE, so no element can exceed sqrt(head_dim) * max|norm weight|. One
  static scale from that bound, taken over the whole model (so every block shares one compiled graph), maps
  them into e4m3 without an amax pass; inductor fuses the cast into the norm + RoPE kernel, which then
  writes half the bytes.
- V gets one scale per tensor from its absolute maximum (the only reduction added).
- Hopper's fp8 kernel writes an e4m3 output. Every output row is a convex combination of V's rows, so
  V's own scale maps it into range; the dequantisation folds into whatever consumes the output (in double
  blocks the output projection's per-row quantisation).

LOSSY: Q, K, V, the softmax weights and the output are each rounded to e4m3 (3 mantissa bits); relative
error against float32 attention about 6e-2 (bf16 kernels: 2e-3). Only with the config's `fp8`, and
`fp8_attention` can turn it off. Without a Hopper GPU or the cudnn-frontend package `available()` says why
and the service keeps PyTorch's attention.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("image.attention_fp8")

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


@functools.cache
def _unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "fp8 attention needs a CUDA GPU"
    if torch.cuda.get_device_capability()[0] < 9:
        return "cuDNN's fp8 attention needs Hopper or newer (compute capability >= 9.0)"
    try:
        import cudnn  # noqa: F401  (PyPI nvidia-cudnn-frontend)
    except ImportError as e:
        return f"cudnn-frontend is not installed (pip install nvidia-cudnn-frontend): {e}"
    return None


def available() -> str | None:
    """None when the kernel can run here, else the reason it cannot."""
    return _unavailable()


# ---- the cuDNN graph, one per geometry ----

@dataclass(frozen=True)
class _Key:
    device: int
    shape_q: tuple[int, ...]  # (batch, heads, seq_q, dim), as cuDNN sees it
    seq_kv: int
    strides: tuple[tuple[int, ...], ...]  # q, k, v in (batch, heads, seq, dim) order
    softmax_scale: float


class _Graph:
    """A built cuDNN fp8 SDPA graph and the uids of its operands."""

    def __init__(self, key: _Key) -> None:
        import cudnn

        self.handle = _handle(key.device)
        b, h, s_q, d = key.shape_q
        e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle)
        dims = {"q": key.shape_q, "k": (b, h, key.seq_kv, d), "v": (b, h, key.seq_kv, d)}
        q, k, v = (g.tensor(name=n, dim=dims[n], stride=s, data_type=e4m3)
                   for n, s in zip("qkv", key.strides, strict=True))
        one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)
        dq, dk, dv, ds, ss, so = (g.tensor(name=n, **one) for n in ("dq", "dk", "dv", "ds", "ss", "so"))
        o, _, amax_s, amax_o = g.sdpa_fp8(q=q, k=k, v=v, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
                                          scale_s=ss, scale_o=so, is_inference=True,
                                          attn_scale=key.softmax_scale, use_causal_mask=False)
        # the output in diffusers' (batch, seq, heads, dim) layout, contiguous
        o.set_output(True).set_dim(key.shape_q).set_stride((s_q * h * d, d, h * d, 1)).set_data_type(e4m3)
        for t in (amax_s, amax_o):  # required outputs; nobody reads them
            t.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(f32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph = g
        self.uids = [t.uid for t in (q, k, v, dq, dk, dv, ds, ss, so, o, amax_s, amax_o)]
        self.workspace_bytes = g.get_workspace_size()
        dev = torch.device("cuda", key.device)
        self.amax = torch.empty(2, device=dev)
        # P goes into e4m3 scaled by 448 (its values are at most 1) and back
        self.p_scales = torch.tensor([1 / E4M3_MAX, E4M3_MAX], device=dev)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_descale: torch.Tensor,
                 v_descale: torch.Tensor, o_scale: torch.Tensor, out: torch.Tensor) -> None:
        import cudnn

        workspace = torch.empty(self.workspace_bytes, device=q.device, dtype=torch.uint8)
        ptrs = (q, k, v, qk_descale, qk_descale, v_descale, self.p_scales[0], self.p_scales[1], o_scale, out,
                self.amax[0], self.amax[1])
        # bare device addresses: the graph already knows every operand's geometry
        pack = {uid: t.data_ptr() for uid, t in zip(self.uids, ptrs, strict=True)}
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
        self.graph.execute(pack, workspace.data_ptr(), handle=self.handle)


_lock = threading.Lock()
_graphs: dict[_Key, _Graph | str] = {}
_handles: dict[int, Any] = {}
_constants: dict[tuple[int, float], torch.Tensor] = {}


def _handle(device: int) -> Any:
    import cudnn

    if device not in _handles:
        with torch.cuda.device(device):
            _handles[device] = cudnn.create_handle()
    return _handles[device]


def _graph(key: _Key) -> _Graph | str:
    """The graph for this geometry, or why cuDNN refused it (then the op computes the same thing with
    PyTorch's kernels: rare sizes must not fail)."""
    with _lock:
        if key not in _graphs:
            try:
                _graphs[key] = _Graph(key)
            except Exception as e:  # cuDNN raises its own types for unsupported geometries
                log.warning("cuDNN fp8 attention refused %s: %s; using PyTorch's attention there", key, e)
                _graphs[key] = f"{type(e).__name__}: {e}"
        return _graphs[key]


def _constant(value: float, device: torch.device) -> torch.Tensor:
    key = (device.index or 0, value)
    if key not in _constants:
        _constants[key] = torch.full((1,), value, device=device, dtype=torch.float32)
    return _constants[key]


def _bhsd_strides(x: torch.Tensor) -> tuple[int, ...]:
    return (x.stride(0), x.stride(2), x.stride(1), x.stride(3))


@torch.library.custom_op("modelplat_image::sdpa_fp8", mutates_args=())
def sdpa_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_descale: float, v_descale: torch.Tensor,
             o_scale: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """softmax(q k^T * softmax_scale) v on e4m3 (batch, seq, heads, dim) tensors whose real values are
    q * qk_descale, k * qk_descale, v * v_descale; returns e4m3 (batch, seq_q, heads, dim), contiguous, holding
    the output times o_scale. Token and batch strides are free (views of a fused projection need no copy)."""
    if not q.is_cuda:  # the CPU tests run the op's contract through PyTorch
        return _torch_sdpa_fp8(q, k, v, qk_descale, v_descale, o_scale, softmax_scale).contiguous()
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    b, s_q, h, d = q.shape
    out = torch.empty(b, s_q, h, d, device=q.device, dtype=E4M3)
    key = _Key(q.device.index or 0, (b, h, s_q, d), k.shape[1], tuple(_bhsd_strides(x) for x in (q, k, v)),
               softmax_scale)
    graph = _graph(key)
    if isinstance(graph, str):
        out.copy_(_torch_sdpa_fp8(q, k, v, qk_descale, v_descale, o_scale, softmax_scale))
        return out
    graph(q, k, v, _constant(qk_descale, q.device), v_descale, o_scale, out)
    return out


@sdpa_fp8.register_fake
def _(q, k, v, qk_descale, v_descale, o_scale, softmax_scale):
    return torch.empty(q.shape, device=q.device, dtype=E4M3)


def _torch_sdpa_fp8(q, k, v, qk_descale, v_descale, o_scale, softmax_scale) -> torch.Tensor:
    """The op's contract with PyTorch's kernels (geometries cuDNN refuses, and the CPU tests)."""
    dtype = torch.bfloat16 if q.is_cuda else torch.float32
    qf, kf = (x.to(dtype) * qk_descale for x in (q, k))
    vf = (v.float() * v_descale.float()).to(dtype)
    o = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (qf, kf, vf)), scale=softmax_scale)
    return (o.transpose(1, 2).float() * o_scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


# ---- the arithmetic around the kernel (traced into the compiled blocks) ----

def quantize_qk(x: torch.Tensor, qk_descale: float) -> torch.Tensor:
    return (x.float() * (1.0 / qk_descale)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 V and its per-tensor descale (amax / 448), shape (1,)."""
    descale = (v.abs().amax().float().clamp(min=1e-12) / E4M3_MAX).reshape(1)
    return (v.float() / descale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), descale


def attention_e4m3(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qk_descale: float,
                   kernel: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention` before its last step: the e4m3 output and the descale that turns it into values."""
    v8, v_descale = quantize_v(value)
    # o = attention(real values) <= max|v| elementwise, so o / v_descale fits e4m3
    o8 = (kernel or sdpa_fp8)(quantize_qk(query, qk_descale), quantize_qk(key, qk_descale), v8, qk_descale,
                              v_descale, 1.0 / v_descale, query.shape[-1] ** -0.5)
    return o8, v_descale


def dequantize(o8: torch.Tensor, descale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (o8.float() * descale).to(dtype)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qk_descale: float,
              kernel: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Diffusers' (batch, seq, heads, dim) attention with the default 1/sqrt(dim) softmax scale, in fp8.
    `qk_descale` must bound Q and K: max|element| <= 448 * qk_descale (see qk_bound)."""
    return dequantize(*attention_e4m3(query, key, value, qk_descale, kernel), query.dtype)


def single_stream(attn: Any, hidden_states: torch.Tensor,
                  image_rotary_emb: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A FLUX or Ovis single block's attention, routed here, up to its e4m3 output: (o8 as (batch, tokens,
    heads * dim), descale). The block's MLP quantisation reads it directly (services/image/mlp.py), where
    dequantising first was a pass of its own (0.5 ms a FLUX forward). It is the processors' own path for
    one stream with fused QKV (projection, per-head RMS norms, RoPE; diffusers 0.42); None for any other
    attention, which then runs through its processor as usual."""
    processor = getattr(attn, "processor", None)
    backend = getattr(processor, "_attention_backend", None)
    if (not isinstance(backend, Backend) or not getattr(attn, "fused_projections", False)
            or image_rotary_emb is None or getattr(attn, "added_kv_proj_dim", None) is not None):
        return None
    rope = sys.modules[type(processor).__module__].apply_rotary_emb  # the module's own (rope.py's once installed)
    q, k, v = (x.unflatten(-1, (attn.heads, -1)) for x in attn.to_qkv(hidden_states).chunk(3, dim=-1))
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k = (rope(x, image_rotary_emb, sequence_dim=1) for x in (q, k))
    o8, descale = attention_e4m3(q, k, v, backend.qk_descale)
    return o8.flatten(2, 3), descale


def reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qk_descale: float) -> torch.Tensor:
    """`attention` with PyTorch's kernels on any device: the same quantisation of Q, K, V and the output
    (not of the softmax weights, which cuDNN also rounds). The CPU tests check the arithmetic through it;
    the GPU test ties the kernel to it."""
    return attention(query, key, value, qk_descale, kernel=_torch_sdpa_fp8)


def qk_bound(transformer: torch.nn.Module) -> float | None:
    """sqrt(head_dim) * the largest |weight| of any Q/K RMS norm: no element of a normalised (then rotated,
    which keeps each pair's norm) Q or K can exceed it. None when some attention's Q or K has no such norm,
    since then nothing bounds them and fp8 attention is not safe."""
    from diffusers.models.normalization import RMSNorm

    bound = 0.0
    for module in transformer.modules():
        if not hasattr(module, "norm_q"):
            continue
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            norm = getattr(module, name, None)
            if norm is None and name.startswith("norm_added") and getattr(module, "added_kv_proj_dim", None) is None:
                continue  # an attention without a text stream (FLUX's and Ovis' single blocks)
            weight = getattr(norm, "weight", None)
            if weight is None or not isinstance(norm, torch.nn.RMSNorm | RMSNorm):
                return None
            bound = max(bound, float(weight.detach().abs().max()))
    if not bound:
        return None
    return math.sqrt(transformer.config.attention_head_dim) * bound


# ---- routing diffusers' attention processors to it ----

@dataclass(frozen=True)
class Backend:
    """What a processor's `_attention_backend` holds once routed here: the model's static Q/K descale."""

    qk_descale: float

    def __str__(self) -> str:
        return "cudnn-fp8"


def _dispatcher(original: Callable) -> Callable:
    def dispatch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *args,
                 backend=None, **kwargs):
        if not isinstance(backend, Backend):
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, backend=backend,
                            **kwargs)
        if attn_mask is None and dropout_p == 0.0 and not is_causal and scale is None:
            return attention(query, key, value, backend.qk_descale)
        # masks (never sent by FLUX or Ovis at inference) go to PyTorch's kernel unchanged
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, backend="native",
                        **kwargs)

    dispatch.modelplat_original = original
    return dispatch


def install(transformer: torch.nn.Module, backend: Backend) -> int:
    """Route every attention processor of the transformer here; returns how many. Processors call diffusers'
    dispatch_attention_fn through their module's globals, so that name is wrapped there (once); calls whose
    backend is not ours pass through unchanged."""
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


def enable(transformer: torch.nn.Module) -> str | None:
    """Route the transformer's attention to cuDNN's fp8 kernel; None when done, else why not."""
    if (why := available()) is not None:
        return why
    bound = qk_bound(transformer)
    if bound is None:
        return "some attention has no RMS norm on Q or K: nothing bounds them for a static fp8 scale"
    install(transformer, Backend(bound / E4M3_MAX))
    return None
