"""Every execution plan cuDNN offers for SDPA at FLUX's 1024px shape (1 x 24 heads x 4608 tokens x 128), bf16
and fp8, timed ten calls back to back, against PyTorch's cuDNN SDPA: is the plan the heuristics pick (which
PyTorch and services/image/attention_fp8.py use) the fastest?

    python benchmarks/image_gpu_cudnn_plans.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from services.image.speed import time_cuda

B, H, S, D = 1, 24, 4608, 128
FLOPS = 4 * B * H * S * S * D
STRIDES = (S * H * D, D, H * D, 1)  # diffusers' (batch, tokens, heads, dim) memory seen as (b, h, s, d)


def plans(handle, kind: str) -> None:
    import cudnn  # PyPI nvidia-cudnn-frontend (the GPU image's; not in the CPU test env)

    fp8 = kind == "fp8"
    io = cudnn.data_type.FP8_E4M3 if fp8 else cudnn.data_type.BFLOAT16
    f32 = cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=io, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    q, k, v = (g.tensor(name=n, dim=(B, H, S, D), stride=STRIDES, data_type=io) for n in "qkv")
    extra_outputs = []
    if fp8:
        one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)
        scales = [g.tensor(name=n, **one) for n in ("dq", "dk", "dv", "ds", "ss", "so")]
        o, _, amax_s, amax_o = g.sdpa_fp8(q=q, k=k, v=v, descale_q=scales[0], descale_k=scales[1],
                                          descale_v=scales[2], descale_s=scales[3], scale_s=scales[4],
                                          scale_o=scales[5], is_inference=True, attn_scale=D ** -0.5,
                                          use_causal_mask=False)
        extra_outputs = [amax_s, amax_o]
        for t in extra_outputs:
            t.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(f32)
    else:
        o, _ = g.sdpa(q=q, k=k, v=v, is_inference=True, attn_scale=D ** -0.5, use_causal_mask=False)
    o.set_output(True).set_dim((B, H, S, D)).set_stride(STRIDES).set_data_type(io)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK])
    g.check_support()
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    pack = {t: torch.randn(B, S, H, D, device="cuda").to(dtype) for t in (q, k, v, o)}
    if fp8:
        pack.update({t: torch.ones(1, device="cuda") for t in scales + extra_outputs})
    count = g.get_execution_plan_count()
    print(f"\n{kind}: {count} plans (plan 0 is the heuristics' pick)")
    for i in range(count):
        try:
            g.build_plan_at_index(i)
            ws = torch.empty(max(1, g.get_workspace_size_plan_at_index(i)), device="cuda", dtype=torch.uint8)
            ms = time_cuda(lambda i=i, ws=ws: g.execute_plan_at_index(pack, ws, i, handle=handle), reps=5,
                           warmup=2, calls=10)
            print(f"| {kind} plan {i} {g.get_plan_name_at_index(i)} | {ms:.3f} ms | {FLOPS / ms / 1e9:.0f} TFLOP/s |")
        except Exception as e:  # a plan this GPU or build cannot run
            print(f"| {kind} plan {i} | {type(e).__name__}: {str(e)[:120]} | |")


def main() -> None:
    import cudnn

    print("cuDNN", cudnn.backend_version(), "(PyTorch's:", torch.backends.cudnn.version(), ")")
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    for kind in ("bf16", "fp8"):
        plans(handle, kind)
    x = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ms = time_cuda(lambda: torch.nn.functional.scaled_dot_product_attention(x, x, x), reps=5, warmup=2,
                       calls=10)
    print(f"| PyTorch SDPA, cuDNN, bf16 | {ms:.3f} ms | {FLOPS / ms / 1e9:.0f} TFLOP/s |")


if __name__ == "__main__":
    main()
