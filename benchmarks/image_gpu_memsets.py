"""Which ops of a FLUX block put Memset nodes into the forward's CUDA graph (286 a bf16 forward, session 8).
Each op is run eagerly and replayed from a CUDA graph under the profiler; its kernels and memsets are listed,
with its time (20 calls back to back). The memsets come from the libraries' workspaces, so the script is also run
with them shrunk (image_gpu_run.sh's `memsets` step: CUBLASLT_WORKSPACE_SIZE, CUBLAS_WORKSPACE_CONFIG).

    python benchmarks/image_gpu_memsets.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from services.image.speed import time_cuda


def ops() -> dict:
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(4096, 3072, device=dev, dtype=bf)
    w = torch.randn(9216, 3072, device=dev, dtype=bf)
    b = torch.randn(9216, device=dev, dtype=bf)
    w2 = torch.randn(3072, 12288, device=dev, dtype=bf)
    h = torch.randn(4608, 12288, device=dev, dtype=bf)
    y = torch.randn(4608, 3072, device=dev, dtype=bf)
    q = torch.randn(1, 24, 4608, 128, device=dev, dtype=bf)

    def cudnn_sdpa():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, q, q)

    return {
        "linear + bias": lambda: F.linear(x, w, b),
        "mm": lambda: x @ w.t(),
        "addmm_ (in place)": lambda: y.addmm_(h, w2.t()),
        "gelu epilogue": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
        "cudnn sdpa": cudnn_sdpa,
    }


def listing(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name[:90] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def timed(fn) -> float:
    """Milliseconds a call, 20 back to back (speed.time_cuda, median of 5)."""
    return time_cuda(fn, reps=5, warmup=0, calls=20)


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith(("CUBLAS", "TORCH_CUBLAS"))}
    print(f"workspace settings: {env or 'defaults'}")
    for name, fn in ops().items():
        fn()
        torch.cuda.synchronize()
        print(f"{name}, eager, {timed(fn):.3f} ms: {listing(fn)}")
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            fn()
        g.replay()
        torch.cuda.synchronize()
        print(f"{name}, graph replay, {timed(g.replay):.3f} ms: {listing(g.replay)}")


if __name__ == "__main__":
    main()
