"""Where a denoising step's GPU time goes: the transformer alone, one forward at 1024px, per speed variant.

Builds the full-size random-weight pipeline (as benchmarks/image_gpu.py does), applies one variant of the
service's speed path, captures the transformer's real inputs from a short generation, then times forwards
with CUDA events and profiles a few with torch.profiler. Kernels are grouped (GEMM, attention, fused
elementwise from inductor, copies, other) and compared with the FLOPs the block shapes need, so the gap to
the matmul ceiling is visible.

    python benchmarks/image_gpu_profile.py --family flux --variants bf16,fp8
    python benchmarks/image_gpu_profile.py --family flux --variants bf16,bf16-autotune
    python benchmarks/image_gpu_profile.py --family flux --variants fp8-mlp-persist,fp8-mlp-persist-bf16att

Variant names: fp8 (lossy mode, fp8 attention included unless `bf16att`), mlp (services/image/mlp.py),
persist (services/image/reductions.py), graph (services/image/cuda_graphs.py), table
(services/image/modulation.py), autotune / coord (inductor tuning), pdl (inductor's Triton kernels launched with
Programmatic Dependent Launch: each may start while the kernel before it drains); the service runs
`fp8-mlp-persist-graph-table` or `bf16-mlp-persist-graph-table`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = Path(os.environ.get("OUT", "/tmp"))

import torch  # noqa: E402

from services.image import attention_fp8, modulation  # noqa: E402
from services.image.engine import ImageEngine  # noqa: E402
from services.image.speed import SpeedOptions, time_cuda  # noqa: E402
from services.image.tiny_pipelines import build  # noqa: E402

CACHE = Path(os.environ.get("IMAGE_COMPILE_CACHE", "/tmp/image-compile-cache"))
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "cudnn_generated", "sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "sm90_xmma", "cutlass", "wgmma", "matmul", "_mm_", "scaled_mm")):
        return "gemm"
    if n.startswith("triton_") or "triton" in n:
        return "inductor/triton"
    if "memcpy" in n or "copy" in n or "memset" in n:
        return "copy"
    return "other"


UNFUSED = {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}


def block_flops(transformer: torch.nn.Module, tokens_img: int, tokens_txt: int) -> dict[str, float]:
    """Matmul and attention FLOPs of one forward (batch 1), counted from the repeated blocks' matmul shapes."""
    lin = 0.0
    for name, m in transformer.named_modules():
        # nn.Linear, fp8.Fp8Linear and mlp.py's fused MLP ends all carry in_features/out_features
        if "transformer_blocks" not in name or not isinstance(getattr(m, "in_features", None), int):
            continue
        parent = transformer.get_submodule(name.rpartition(".")[0])
        if name.rpartition(".")[2] in UNFUSED and hasattr(parent, "to_qkv"):
            continue  # replaced by the fused projection (diffusers keeps the originals registered)
        if "norm" in name:  # AdaLN modulation: one row (the timestep embedding)
            rows = 1
        elif name.startswith("single_transformer_blocks"):
            rows = tokens_img + tokens_txt
        elif "add" in name or "context" in name:  # double blocks: the text stream
            rows = tokens_txt
        else:
            rows = tokens_img
        lin += 2.0 * rows * m.in_features * m.out_features
    cfg = transformer.config
    tokens = tokens_img + tokens_txt
    blocks = cfg.num_layers + cfg.num_single_layers
    attn = blocks * 4.0 * tokens * tokens * cfg.num_attention_heads * cfg.attention_head_dim
    return {"linear_tflop": lin / 1e12, "attention_tflop": attn / 1e12}


def capture_inputs(engine: ImageEngine, size: int) -> tuple[tuple, dict]:
    seen: dict = {}

    def hook(mod, args, kwargs):
        if not seen:
            seen["args"], seen["kwargs"] = args, dict(kwargs)

    h = engine.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    engine.warmup(size, size, steps=2)
    h.remove()
    return seen["args"], seen["kwargs"]


def profile(fn, reps: int = 3) -> tuple[dict[str, float], list[tuple[str, float, int]], float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[ev.name].append(ev.device_time_total / 1000)
    cats: dict[str, float] = collections.defaultdict(float)
    rows = []
    for name, ts in per_kernel.items():
        cats[category(name)] += sum(ts) / reps
        rows.append((name, sum(ts) / reps, len(ts) // reps))
    rows.sort(key=lambda r: -r[1])
    return dict(cats), rows, sum(cats.values())


SINGLE_STREAM = attention_fp8.single_stream


def apply_variant(variant: str) -> SpeedOptions:
    import torch._inductor.config as ic

    ic.max_autotune_gemm = ic.coordinate_descent_tuning = False
    if "autotune" in variant:
        ic.max_autotune_gemm = True
        ic.max_autotune_gemm_backends = "ATEN,TRITON"
    if "coord" in variant:
        ic.coordinate_descent_tuning = True
    if hasattr(ic.triton, "enable_pdl"):
        ic.triton.enable_pdl = "pdl" in variant
    elif "pdl" in variant:
        raise SystemExit(f"this torch ({torch.__version__}) has no inductor PDL switch")
    # "dequant": fp8 single blocks dequantise the attention output before the MLP quantisation (the old path)
    attention_fp8.single_stream = (lambda *a: None) if "dequant" in variant else SINGLE_STREAM
    return SpeedOptions(compile=True, fuse_qkv=True, fp8=variant.startswith("fp8"), attention="native",
                        cache_dir=CACHE, compile_vae=False, long_row_reductions="persist" in variant,
                        fuse_mlp="mlp" in variant, fp8_attention="bf16att" not in variant,
                        cuda_graph="graph" in variant, modulation_table="table" in variant)


def run_variant(family: str, variant: str, size: int) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    pipe = build(family, "full", "cuda", torch.bfloat16)
    opts = apply_variant(variant)
    t = time.perf_counter()
    engine = ImageEngine.from_pipeline(pipe, family, "cuda", opts)
    args, kwargs = capture_inputs(engine, size)
    log(f"{family}/{variant}: speed path + compile {time.perf_counter() - t:.1f}s {engine.applied.as_dict()}")
    tr = engine.pipe.transformer

    def fwd():
        with torch.inference_mode():
            tr(*args, **kwargs)

    # `table` variants: forwards read their norms' rows from the table of the captured image's schedule
    with modulation.schedule(engine.pipe):
        ms = time_cuda(fwd, reps=10, warmup=2)
        cats, rows, busy = profile(fwd)
    graphed = tr.__dict__.get("forward")  # services/image/cuda_graphs.py, with the `graph` variants
    graphed = getattr(graphed, "inner", graphed)  # beneath services/image/modulation.py's forward
    replays = getattr(graphed, "replays", None)
    hs = kwargs["hidden_states"]
    txt = kwargs.get("encoder_hidden_states")
    fl = block_flops(tr, hs.shape[1], txt.shape[1] if txt is not None else 0)
    batch = hs.shape[0]
    res = {"family": family, "variant": variant, "forward_ms": round(ms, 2), "gpu_busy_ms": round(busy, 2),
           "batch": batch, "graph_replays": replays,
           "kernels_per_forward": sum(c for _, _, c in rows), **{k: round(v * batch, 2) for k, v in fl.items()},
           "categories_ms": {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}
    g = cats.get("gemm", 0)
    if g:
        res["gemm_tflops"] = round(fl["linear_tflop"] * batch / (g / 1000), 1)
    a = cats.get("attention", 0)
    if a:
        res["attention_tflops"] = round(fl["attention_tflop"] * batch / (a / 1000), 1)
    log(json.dumps(res))
    res["kernels"] = [(name, round(total, 3), count) for name, total, count in rows[:60]]
    for name, total, count in rows[:int(os.environ.get("PROFILE_TOP", "18"))]:
        print(f"    {total:8.2f} ms  x{count:<4d} {category(name):16s} {name[:150]}")
    engine.close()
    del pipe, engine
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["flux", "ovis"], default="flux")
    ap.add_argument("--variants", default="bf16,fp8")
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    log(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    results = [run_variant(a.family, v, a.size) for v in a.variants.split(",")]
    (OUT / f"profile_{a.family}.json").write_text(json.dumps(results, indent=1))
    print("\n| family | variant | forward ms | GPU busy ms | gemm ms | attention ms | triton ms | other ms |"
          " gemm TFLOP/s | attn TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["categories_ms"]
        print(f"| {r['family']} | {r['variant']} | {r['forward_ms']} | {r['gpu_busy_ms']} | {c.get('gemm', 0)} | "
              f"{c.get('attention', 0)} | {c.get('inductor/triton', 0)} | {c.get('other', 0) + c.get('copy', 0):.2f}"
              f" | {r.get('gemm_tflops', '-')} | {r.get('attention_tflops', '-')} |")


if __name__ == "__main__":
    main()
