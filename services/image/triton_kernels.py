"""Triton kernels of the GPU speed path (imported only on CUDA; services/image/mlp.py has the CPU reference)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

E4M3_MAX = tl.constexpr(448.0)  # a constexpr global: readable inside @triton.jit


@triton.jit
def _gelu_tanh(x):
    # 0.5 x (1 + tanh(u)) = x - x / (1 + exp(2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x - x / (1.0 + tl.exp(2.0 * u))


@triton.jit
def _up_output(b_ptr, bias_ptr, offs, bias_offs, mask, HAS_BIAS: tl.constexpr):
    """The up projection's output as the unfused path stores it: `y + bias` rounded to the activation dtype."""
    x = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + tl.load(bias_ptr + bias_offs, mask=mask, other=0.0).to(tl.float32)
    return x.to(b_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _act_quant_rows(a_ptr, a_scale_ptr, b_ptr, bias_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr,
                    KB: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr,
                    A_SCALED: tl.constexpr):
    """One row per program, read once: cat(a, act(b + bias)) -> e4m3 and its float32 scale (amax / 448).
    act is GELU(tanh) over KB columns, or SwiGLU over 2 KB columns (value half, then gate half). A_SCALED:
    a is e4m3 times a_scale (the fp8 attention's output), dequantised and rounded as the unfused path does."""
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, BLOCK)
    in_a = col < KA
    in_b = (col >= KA) & (col < KA + KB)
    xa = tl.load(a_ptr + row * a_stride + col, mask=in_a, other=0.0).to(tl.float32)  # all masked if KA == 0
    dtype = b_ptr.dtype.element_ty
    if A_SCALED:
        xa = (xa * tl.load(a_scale_ptr)).to(dtype).to(tl.float32)
    h = _up_output(b_ptr, bias_ptr, row * b_stride + (col - KA), col - KA, in_b, HAS_BIAS)
    if SWIGLU:
        g = _up_output(b_ptr, bias_ptr, row * b_stride + KB + (col - KA), KB + col - KA, in_b, HAS_BIAS)
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32) * h  # silu(gate), rounded, times value
    else:
        act = _gelu_tanh(h)
    # the activation rounded to the activation dtype, as the unfused path stores it before quantising
    x = tl.where(in_a, xa, act.to(dtype).to(tl.float32))
    scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / E4M3_MAX
    q = tl.clamp(x / scale, -E4M3_MAX, E4M3_MAX)
    tl.store(q_ptr + row * (KA + KB) + col, q.to(tl.float8e4nv), mask=col < KA + KB)
    tl.store(s_ptr + row, scale)


def _unit_cols(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(1) == 1 else x.contiguous()


def quantize(attn: torch.Tensor | None, mlp: torch.Tensor, bias: torch.Tensor | None, swiglu: bool,
             num_warps: int = 8, traced: bool = False,
             attn_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch _act_quant_rows. 8 warps: fastest of 8/16/32 for FLUX's 12288- and 15360-long rows on an H100
    (benchmarks/image_gpu_rowquant.py). `traced`: inside act_quant_rows' triton_op, where the launch must go
    through wrap_triton; called eagerly that wrapper cost ~0.4 ms a call, so eager calls launch directly."""
    mlp = _unit_cols(mlp)
    attn = None if attn is None else _unit_cols(attn)
    ka, kb = (0 if attn is None else attn.shape[1]), mlp.shape[1] // (2 if swiglu else 1)
    rows = mlp.shape[0]
    q = torch.empty(rows, ka + kb, device=mlp.device, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=mlp.device, dtype=torch.float32)
    a = mlp if attn is None else attn
    kernel = wrap_triton(_act_quant_rows) if traced else _act_quant_rows
    scaled = attn is not None and attn_scale is not None
    kernel[(rows,)](a, attn_scale if scaled else s, mlp, mlp if bias is None else bias.contiguous(), q, s,
                    a.stride(0), mlp.stride(0), ka, kb, triton.next_power_of_2(ka + kb), bias is not None, swiglu,
                    scaled, num_warps=num_warps)
    return q, s


# A triton_op, not a plain custom op: inside a compiled block inductor launches the kernel from its own
# generated code, without a Python dispatch per call.
@triton_op("modelplat_image::act_quant_rows_cuda", mutates_args=())
def act_quant_rows(attn: torch.Tensor | None, mlp: torch.Tensor, bias: torch.Tensor | None, swiglu: bool,
                   attn_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize(attn, mlp, bias, swiglu, traced=True, attn_scale=attn_scale)
