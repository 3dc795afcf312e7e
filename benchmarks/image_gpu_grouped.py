"""FLUX's double blocks: the text stream's matmuls grouped with the image stream's, measured one shape at a time.

Each double block runs every projection twice, once per stream, with the stream's own weights: the image
stream at M=4096 rows, the text stream at M=512. cuBLAS runs the M=512 ones at 390-460 TFLOP/s against
~700 for the image stream (image_gpu_gemm.py): 512 rows are about one wave of output tiles on 132 SMs, so
most of that kernel is a partly empty wave. `torch._grouped_mm` (CUTLASS's grouped GEMM, PyTorch's MoE
kernel) runs both streams as one launch over the rows cat(text, image), each group with its own weight, so
the text stream's tiles fill the image stream's last wave. Its output is already the joint sequence the
attention needs. It takes no bias and no epilogue, so the bias (and the FF's GELU, today in cuBLASLt's
epilogue) moves into a pass inductor fuses with what follows.

Variants per shape (bf16, ten calls back to back, median of five):
- separate: text addmm + image addmm (the FF up projection through cuBLASLt's GELU epilogue), as now;
- two streams: the same two calls, the text one on a second CUDA stream;
- grouped: one `_grouped_mm`, then bias (+ GELU) as one compiled pass.

    python benchmarks/image_gpu_grouped.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.image.speed import time_cuda

D = 3072
TXT, IMG = 512, 4096
KINDS = {"qkv": (D, 3 * D, False), "out": (D, D, False), "ff up": (D, 4 * D, True), "ff down": (4 * D, D, False)}
BLOCKS = 19


def _bias_act(y: torch.Tensor, bias: torch.Tensor, rows: int, gelu: bool) -> torch.Tensor:
    b = torch.cat([bias[0].expand(rows, -1), bias[1].expand(y.shape[0] - rows, -1)])
    y = y + b
    return F.gelu(y, approximate="tanh") if gelu else y


bias_act = torch.compile(_bias_act, dynamic=False)


def variants(k: int, n: int, gelu: bool) -> dict[str, callable]:
    torch.manual_seed(0)
    x = torch.randn(TXT + IMG, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2, n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    b = torch.randn(2, n, device="cuda", dtype=torch.bfloat16)
    xt, xi = x[:TXT], x[TXT:]
    offs = torch.tensor([TXT, TXT + IMG], device="cuda", dtype=torch.int32)
    side = torch.cuda.Stream()

    def one(xs, i):
        if gelu:
            return torch._addmm_activation(b[i], xs, w[i].t(), use_gelu=True)
        return torch.addmm(b[i], xs, w[i].t())

    def separate():
        return one(xt, 0), one(xi, 1)

    def two_streams():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            t = one(xt, 0)
        i = one(xi, 1)
        torch.cuda.current_stream().wait_stream(side)
        return t, i

    def grouped_raw():
        return torch._grouped_mm(x, w.transpose(1, 2), offs=offs)

    def grouped():
        return bias_act(grouped_raw(), b, TXT, gelu)

    ref = torch.cat(separate())
    err = ((grouped().float() - ref.float()).norm() / ref.float().norm()).item()
    return {"separate": separate, "two streams": two_streams, "grouped mm only": grouped_raw,
            "grouped + bias/act pass": grouped}, err


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| kind (K, N) | variant | ms | TFLOP/s | ms per forward (x19) |")
    print("|---|---|---|---|---|")
    totals: dict[str, float] = {}
    for kind, (k, n, gelu) in KINDS.items():
        fns, err = variants(k, n, gelu)
        flop = 2 * (TXT + IMG) * k * n
        for name, fn in fns.items():
            ms = time_cuda(fn, reps=5, warmup=3, calls=10)
            totals[name] = totals.get(name, 0.0) + ms * BLOCKS
            print(f"| {kind} ({k}, {n}) | {name} | {ms:.3f} | {flop / ms / 1e9:.0f} | {ms * BLOCKS:.2f} |")
        print(f"| {kind} | grouped vs separate rel. error | {err:.2e} | | |")
    for name, total in totals.items():
        print(f"| all four | {name} | | | {total:.2f} |")


if __name__ == "__main__":
    main()
