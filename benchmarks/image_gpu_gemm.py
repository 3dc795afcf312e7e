"""The image transformers' matmuls one by one at 1024px: how fast each GEMM shape runs in bf16 and in fp8, and
which kernel runs it. Tells whether a different fp8 scaling (per tensor instead of per row) or operand order
would buy back time in the matmuls, which are 55-70 % of a step (image_gpu_results.md). Measured in session
4: neither does (per-row scaling runs on cuBLASLt's outer-vector kernels and is the fastest overall), and
timing every algorithm cuBLASLt proposes instead of taking its first gained nothing either (experiment
commit e48bb18, reverted).

Shapes (rows M, inner K, outputs N), one block each; the counts are blocks per forward:
- FLUX.1-dev: 19 double blocks (image stream M=4096, text stream M=512) and 38 single blocks (M=4608).
- Ovis-Image-7B with the CFG pair in one forward: 6 double blocks (M=8192 / 512), 27 single (M=8704).

    python benchmarks/image_gpu_gemm.py [--profile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.image import fp8
from services.image.speed import time_cuda

D = 3072
SHAPES = {  # name: (M, K, N, blocks per forward)
    "flux double img qkv": (4096, D, 3 * D, 19), "flux double img out": (4096, D, D, 19),
    "flux double img ff up": (4096, D, 4 * D, 19), "flux double img ff down": (4096, 4 * D, D, 19),
    "flux double txt qkv": (512, D, 3 * D, 19), "flux double txt ff up": (512, D, 4 * D, 19),
    "flux double txt ff down": (512, 4 * D, D, 19),
    "flux single qkv": (4608, D, 3 * D, 38), "flux single mlp up": (4608, D, 4 * D, 38),
    "flux single out": (4608, 5 * D, D, 38),
    "ovis double img ff up": (8192, D, 8 * D, 6), "ovis double img ff down": (8192, 4 * D, D, 6),
    "ovis single qkv": (8704, D, 3 * D, 27), "ovis single mlp up": (8704, D, 8 * D, 27),
    "ovis single out": (8704, 5 * D, D, 27),
}


def mm(a, b, sa, sb):
    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True)


def variants(m: int, k: int, n: int) -> dict[str, callable]:
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    xq, xs = fp8._rowwise(x)
    wq, ws = fp8._rowwise(w)
    xt = (x.abs().amax().float() / fp8.E4M3_MAX).reshape(())
    xq_t = (x / xt).to(fp8.E4M3)
    wt = (w.abs().amax().float() / fp8.E4M3_MAX).reshape(())
    wq_t = (w / wt).to(fp8.E4M3)

    return {
        "bf16 mm": lambda: x @ w.t(),
        "fp8 rowwise": lambda: mm(xq, wq.t(), xs, ws.t().contiguous()),
        "fp8 rowwise, swapped (W x^T)": lambda: mm(wq, xq.t(), ws, xs.t().contiguous()),
        "fp8 tensorwise": lambda: mm(xq_t, wq_t.t(), xt, wt),
    }


def kernel_names(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return "; ".join(n[:90] for n in names)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true", help="print the kernel each variant runs")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| shape | M x K x N | variant | ms | TFLOP/s | ms per forward |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, float] = {}
    for name, (m, k, n, blocks) in SHAPES.items():
        flop = 2 * m * k * n
        for variant, fn in variants(m, k, n).items():
            ms = time_cuda(fn, reps=10, warmup=3, calls=10)
            family = name.split()[0]
            totals[f"{family} {variant}"] = totals.get(f"{family} {variant}", 0.0) + ms * blocks
            print(f"| {name} | {m}x{k}x{n} | {variant} | {ms:.4f} | {flop / ms / 1e9:.0f} | {ms * blocks:.2f} |",
                  flush=True)
            if args.profile:
                print(f"|  |  | kernel: {kernel_names(fn)} |  |  |  |")
    print("\n| family, variant | ms of these matmuls per forward |\n|---|---|")
    for key, ms in totals.items():
        print(f"| {key} | {ms:.2f} |")


if __name__ == "__main__":
    main()
