"""What a FLUX image costs outside its denoising steps (text encoders, VAE decode, post-processing), with
the service's fp8 speed path: each stage of the pipeline timed with a device sync around it.

    python benchmarks/image_gpu_other.py [--mode fp8|bf16]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from services.image.engine import ImageEngine
from services.image.jobs import Job
from services.image.speed import SpeedOptions
from services.image.tiny_pipelines import build

CACHE = Path(os.environ.get("IMAGE_COMPILE_CACHE", "/tmp/image-compile-cache"))


def timed(times: dict[str, list[float]], name: str, fn):
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        times[name].append(time.perf_counter() - t0)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["fp8", "bf16"], default="fp8")
    a = ap.parse_args()
    pipe = build("flux", "full", "cuda", torch.bfloat16)
    opts = SpeedOptions(compile=True, fuse_qkv=True, fp8=a.mode == "fp8", cache_dir=CACHE)
    engine = ImageEngine.from_pipeline(pipe, "flux", "cuda", opts, vae_tiling_above=1536)
    engine.warmup(1024, 1024)
    times: dict[str, list[float]] = collections.defaultdict(list)
    pipe.encode_prompt = timed(times, "encode_prompt (CLIP + T5)", pipe.encode_prompt)
    pipe.vae.decode = timed(times, "vae.decode", pipe.vae.decode)
    pipe.image_processor.postprocess = timed(times, "postprocess (to PIL)", pipe.image_processor.postprocess)
    totals = []
    for seed in range(3):
        t0 = time.perf_counter()
        res = engine.generate([Job("a photo of a red fox in the snow", 1024, 1024, 28, 3.5, seed=seed)])[0]
        totals.append((time.perf_counter() - t0, res.step_seconds))
    print(f"| stage ({a.mode}) | ms (median of 3) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) * 1000:.1f} |")
    total, step = min(totals)
    print(f"| whole image | {total * 1000:.1f} |\n| 28 x mean step | {28 * step * 1000:.1f} |")


if __name__ == "__main__":
    main()
