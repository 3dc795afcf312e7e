"""The MLP end of a FLUX block at 1024px, kernel by kernel: where the fp8 per-row quantisation and the bf16
GELU pass go, and whether a different kernel removes them.

fp8: the down projection's input is quantised per row (amax over the row, then a cast). In single blocks
that row is cat(attention output, GELU(mlp)) with 15360 elements, in double blocks GELU(mlp) with 12288:
inductor reads such rows twice (image_gpu_profile.py: 11.7 ms of FLUX's 99.5 ms fp8 forward). Compared here:
inductor's kernel, inductor with the row held in registers, and the one-pass Triton kernel the service
uses (services/image/triton_kernels.py) at several warp counts.
bf16: the GELU after the up projection is its own pass over a 4608 x 12288 tensor; cuBLASLt can apply it
in the matmul's epilogue (torch._addmm_activation), and the single block's cat can be avoided by splitting
its output projection into two accumulating matmuls.

    python benchmarks/image_gpu_rowquant.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.image import fp8
from services.image.speed import time_cuda

M, DIM, MLP = 4608, 3072, 12288


def reference(attn: torch.Tensor | None, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What services/image/fp8.py computes for the down projection's input, unfused."""
    h = F.gelu(mlp, approximate="tanh")
    return fp8._rowwise(h if attn is None else torch.cat([attn, h], dim=-1))


def one_pass(attn: torch.Tensor | None, mlp: torch.Tensor, warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from services.image import triton_kernels

    return triton_kernels.quantize(attn, mlp, None, False, num_warps=warps)


def compiled(persistent_max: int | None):
    import torch._dynamo
    from torch._inductor.virtualized import V

    torch._dynamo.reset()
    if persistent_max:
        from services.image.reductions import LongRowReductions

        V.set_choices_handler(LongRowReductions(persistent_max))
    return torch.compile(reference, fullgraph=True, dynamic=False)


def quant_rows() -> list[tuple]:
    torch.manual_seed(0)
    attn = torch.randn(M, DIM, device="cuda", dtype=torch.bfloat16)
    mlp = torch.randn(M, MLP, device="cuda", dtype=torch.bfloat16) * 2
    rows = []
    cases_in = (("single block: cat(attn, gelu(mlp)) 4608x15360", attn), ("double block: gelu(mlp) 4608x12288", None))
    for label, a in cases_in:
        ref_q, ref_s = reference(a, mlp)
        nbytes = mlp.numel() * 3 + (0 if a is None else a.numel() * 3)  # bf16 read once, e4m3 written
        cases = [(f"inductor (rows <= {pm or 1024} persistent)", compiled(pm)) for pm in (None, 4096, 16384)]
        cases += [(f"one-pass Triton, {w} warps", lambda a, m, w=w: one_pass(a, m, w)) for w in (8, 16, 32)]
        for name, fn in cases:
            q, s = fn(a, mlp)
            bad = float((q.float() * s - ref_q.float() * ref_s).abs().max())
            ms = time_cuda(lambda fn=fn, a=a: fn(a, mlp), reps=30, warmup=3)
            rows.append((label, name, ms, nbytes / ms / 1e6, f"max diff {bad:.3g}"))
    return rows


def gelu_epilogue() -> list[tuple]:
    torch.manual_seed(0)
    x = torch.randn(M, DIM, device="cuda", dtype=torch.bfloat16)
    attn = torch.randn(M, DIM, device="cuda", dtype=torch.bfloat16)
    w_up = torch.randn(MLP, DIM, device="cuda", dtype=torch.bfloat16) / DIM**0.5
    b_up = torch.randn(MLP, device="cuda", dtype=torch.bfloat16)
    w_out = torch.randn(DIM, DIM + MLP, device="cuda", dtype=torch.bfloat16) / (DIM + MLP) ** 0.5
    b_out = torch.randn(DIM, device="cuda", dtype=torch.bfloat16)
    w_out_a, w_out_m = w_out[:, :DIM].t(), w_out[:, DIM:].t()

    def unfused(x, attn):
        h = F.gelu(F.linear(x, w_up, b_up), approximate="tanh")
        return F.linear(torch.cat([attn, h], dim=-1), w_out, b_out)

    def epilogue(x, attn):
        h = torch._addmm_activation(b_up, x, w_up.t(), use_gelu=True)
        return torch.addmm(torch.addmm(b_out, attn, w_out_a), h, w_out_m)

    ref = unfused(x, attn).float()
    rows = []
    flops = 2.0 * M * DIM * MLP + 2.0 * M * (DIM + MLP) * DIM
    for name, fn in (("up GEMM + GELU + cat + out GEMM (compiled)", torch.compile(unfused, dynamic=False)),
                     ("GELU in cuBLASLt epilogue, out GEMM split (no cat)", epilogue)):
        err = float((fn(x, attn).float() - ref).norm() / ref.norm())
        ms = time_cuda(lambda fn=fn: fn(x, attn), reps=30, warmup=3)
        rows.append(("single block MLP, bf16", name, ms, flops / ms / 1e9, f"rel err {err:.2e}"))
    return rows


def main() -> None:
    import triton  # GPU machines only (the CPU test env has no triton)

    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name(0)}")
    rows = quant_rows() + gelu_epilogue()
    print("\n| case | kernel | ms | GB/s (quant) or GFLOP/s (MLP) | check |")
    print("|---|---|---|---|---|")
    for case, name, ms, rate, check in rows:
        print(f"| {case} | {name} | {ms:.3f} | {rate:.0f} | {check} |")


if __name__ == "__main__":
    main()
