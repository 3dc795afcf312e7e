"""Attention alone at the image models' 1024px shapes: PyTorch's bf16 SDPA kernels against cuDNN's fp8 SDPA
(services/image/attention_fp8.py, on the cudnn-frontend package, carried as a wheel) and FlashAttention-3 in
bf16 and fp8 (benchmarks/fa3_vllm.py), with the error of each against a float32 reference. The "in block" rows compile a
block's attention part as the service does (RMS norm of Q and K, RoPE, attention; for fp8 the quantisation
fused in) so they include what fp8 adds around the kernel. Attention is ~31 % of FLUX's and ~27 % of Ovis'
forward (image_gpu_results.md).

    python benchmarks/image_gpu_attention.py
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.image import attention_fp8, fp8
from services.image.speed import time_cuda

# ten calls back to back per CUDA-event pair: one call alone also times the host's launch (session 4)
bench = functools.partial(time_cuda, reps=10, warmup=3, calls=10)

SHAPES = {"flux (1x24x4608x128)": (1, 24, 4608, 128), "ovis CFG pair (2x24x4352x128)": (2, 24, 4352, 128)}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref).norm() / ref.norm())


def fa3_rows(label: str, q, k, v, ref, flops: float) -> list[tuple]:
    import fa3_vllm as fa3  # benchmarks/ is on sys.path when run as a script

    if (why := fa3.load()) is not None:
        print(f"{label}: FA3 skipped: {why}")
        return []
    bshd = [x.transpose(1, 2) for x in (q, k, v)]  # FA3 and diffusers: (batch, seq, heads, dim) views
    rows = []
    for name, in_fp8 in (("bf16 FA3", False), ("fp8 FA3 + eager quant", True)):
        ms = bench(lambda in_fp8=in_fp8: fa3.attention(*bshd, fp8=in_fp8))
        err = rel_err(fa3.attention(*bshd, fp8=in_fp8).transpose(1, 2)[:, :4], ref)
        rows.append((label, name, ms, flops / ms / 1e9, err))
    quantized = [fa3.quantize(x) for x in bshd]
    scale = q.shape[-1] ** -0.5
    args = [t for t, _ in quantized] + [d for _, d in quantized]
    ms = bench(lambda: fa3.fa3(*args[:3], scale, *args[3:]))
    rows.append((label, "fp8 FA3 kernel only", ms, flops / ms / 1e9, rows[-1][-1]))
    return rows


def block_rows(label: str, shape: tuple[int, ...], flops: float) -> list[tuple]:
    """A block's attention part compiled like the service's blocks: QKV GEMM output in, norm + RoPE, attention."""
    import fa3_vllm as fa3  # benchmarks/ is on sys.path when run as a script

    b, h, s, d = shape
    qkv = torch.randn(b, s, 3 * h * d, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(d, device="cuda", dtype=torch.bfloat16) + 0.5
    cos, sin = (torch.randn(s, 1, d, device="cuda", dtype=torch.float32) for _ in range(2))

    def part(qkv: torch.Tensor, kernel: str) -> torch.Tensor:
        q, k, v = (x.unflatten(-1, (h, d)) for x in qkv.chunk(3, dim=-1))
        q, k = (F.rms_norm(x, (d,), w, 1e-6) for x in (q, k))
        q, k = ((x.float() * cos + x.float().roll(1, -1) * sin).to(x.dtype) for x in (q, k))
        if kernel == "sdpa":
            return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
        if kernel == "cudnn fp8 (service)":
            return attention_fp8.attention(q, k, v, qk_descale)
        return fa3.attention(q, k, v, fp8=kernel == "fa3 fp8")

    qk_descale = d**0.5 * float(w.abs().max()) / fp8.E4M3_MAX  # the service's static bound (attention_fp8.qk_bound)
    kernels = ["sdpa"] + (["cudnn fp8 (service)"] if attention_fp8.available() is None else [])
    kernels += ["fa3 bf16", "fa3 fp8"] if fa3.load() is None else []
    rows = []
    for kernel in kernels:
        fn = torch.compile(lambda x, kernel=kernel: part(x, kernel), fullgraph=True, dynamic=False)
        ms = bench(lambda fn=fn: fn(qkv))
        rows.append((label, f"in block: norm+RoPE+{kernel} (compiled)", ms, flops / ms / 1e9, float("nan")))
    return rows


def measure(label: str, shape: tuple[int, ...]) -> list[tuple]:
    torch.manual_seed(0)
    b, h, s, d = shape
    # RMS-normed queries/keys (as in FLUX/Ovis): unit scale per element; values at a typical activation scale
    q, k = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 2
    flops = 4.0 * b * h * s * s * d
    ref = F.scaled_dot_product_attention(q[:, :4].float(), k[:, :4].float(), v[:, :4].float())
    rows = []
    for name, backend in (("bf16 cuDNN (SDPA)", SDPBackend.CUDNN_ATTENTION),
                          ("bf16 flash (SDPA)", SDPBackend.FLASH_ATTENTION)):
        with sdpa_kernel(backend):
            ms = bench(lambda: F.scaled_dot_product_attention(q, k, v))
            err = rel_err(F.scaled_dot_product_attention(q, k, v)[:, :4], ref)
        rows.append((label, name, ms, flops / ms / 1e9, err))
    if (why := attention_fp8.available()) is None:  # the service's op (static Q/K scale: |q|, |k| <= 6 here)
        qk_descale = 6.0 / fp8.E4M3_MAX
        q8, k8 = (attention_fp8.quantize_qk(x, qk_descale) for x in (q, k))
        v8, v_descale = attention_fp8.quantize_v(v)
        args = (q8.transpose(1, 2), k8.transpose(1, 2), v8.transpose(1, 2), qk_descale, v_descale, 1 / v_descale,
                d**-0.5)
        bshd = [x.transpose(1, 2) for x in (q, k, v)]
        err = rel_err(attention_fp8.attention(*bshd, qk_descale).transpose(1, 2)[:, :4], ref)
        ms = bench(lambda: attention_fp8.sdpa_fp8(*args))
        rows.append((label, "fp8 cuDNN, service op (kernel only)", ms, flops / ms / 1e9, err))
        ms = bench(lambda: attention_fp8.attention(*bshd, qk_descale))
        rows.append((label, "fp8 cuDNN, service op + eager quant/dequant", ms, flops / ms / 1e9, err))
    else:
        print(f"{label}: cuDNN fp8 attention skipped: {why}")
    rows += fa3_rows(label, q, k, v, ref, flops)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        rows += block_rows(label, shape, flops)
    return rows


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}")
    rows = [r for label, shape in SHAPES.items() for r in measure(label, shape)]
    print("\n| shape | kernel | ms | TFLOP/s | rel. error vs fp32 |")
    print("|---|---|---|---|---|")
    for label, name, ms, tf, err in rows:
        print(f"| {label} | {name} | {ms:.3f} | {tf:.0f} | {err:.2e} |")


if __name__ == "__main__":
    main()
