"""Which ops of a FLUX block put Memset nodes into the forward's CUDA graph (286 a bf16 forward, session 8).
Each op is run eagerly and replayed from a CUDA graph under the profiler; its kernels and memsets are listed.

    python benchmarks/image_gpu_memsets.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile


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


def main() -> None:
    for name, fn in ops().items():
        fn()
        torch.cuda.synchronize()
        print(f"{name}, eager: {listing(fn)}")
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
        print(f"{name}, graph replay: {listing(g.replay)}")


if __name__ == "__main__":
    main()
