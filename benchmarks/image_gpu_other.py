"""What a FLUX image costs outside its denoising steps (text encoders, VAE decode, conversion to PIL), with
the service's speed path: each stage of the pipeline timed with a device sync around it, the kernels of the
two GPU stages, and the variants measured for them.

    python benchmarks/image_gpu_other.py [--mode fp8|bf16] [--variants] [--gaps]
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

from services.image import engine as engine_mod
from services.image.engine import ImageEngine
from services.image.jobs import Job
from services.image.speed import SpeedOptions
from services.image.tiny_pipelines import build

CACHE = Path(os.environ.get("IMAGE_COMPILE_CACHE", "/tmp/image-compile-cache"))
PROMPT = "a photo of a red fox in the snow"


def timed(times: dict[str, list[float]], name: str, fn):
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        times[name].append(time.perf_counter() - t0)
        return out

    return wrapper


def ms(fn, reps: int = 5) -> float:
    """Median wall milliseconds of fn() with a device sync on both sides, after two calls (compile, capture)."""
    fn(), fn()
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def kernels(name: str, fn, top: int = 10) -> None:
    """One call under the profiler: GPU kernels summed by name."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            rows[ev.name][0] += ev.device_time_total / 1000
            rows[ev.name][1] += 1
    busy = sum(r[0] for r in rows.values())
    print(f"\n{name}: GPU busy {busy:.2f} ms in {sum(r[1] for r in rows.values())} kernels")
    print("| kernel | ms | calls |\n|---|---|---|")
    for k, (t, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| {k[:90]} | {t:.2f} | {n} |")


def variants(pipe, latents: torch.Tensor) -> None:
    """The alternatives measured for the outside stages, against the service's current choice."""
    print("\n| stage | variant | ms |\n|---|---|---|")
    decode = lambda: pipe.vae.decode(latents, return_dict=False)[0]  # noqa: E731
    print(f"| vae.decode | service (compiled) | {ms(decode):.1f} |")
    torch.backends.cudnn.benchmark = True
    print(f"| vae.decode | + cudnn.benchmark | {ms(decode):.1f} |")
    torch.backends.cudnn.benchmark = False
    image = pipe.image_processor.postprocess(decode(), output_type="pt")
    host = ms(lambda: pipe.image_processor.postprocess(image, output_type="pil"))
    print(f"| to PIL | diffusers (numpy on the host) | {host:.1f} |")
    print(f"| to PIL | service (on the GPU, then bytes) | {ms(lambda: engine_mod.to_pil(image)):.1f} |")


def gaps(engine: ImageEngine, top: int = 12, stacks: bool = False) -> None:
    """One whole image under torch.profiler: how long the GPU sat idle, and where (the kernels around the
    longest gaps). Everything the GPU waits for is host work: tokenising, Python, launches, syncs."""
    from torch.profiler import ProfilerActivity, profile

    job = Job(PROMPT, 1024, 1024, 28, 3.5, seed=7)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], with_stack=stacks) as prof:
        t0 = time.perf_counter()
        engine.generate([job])
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1000
    evs = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    busy, idle, end, holes = 0.0, 0.0, evs[0][0], []
    for i, (s, e, _) in enumerate(evs):
        if s > end:
            idle += s - end
            holes.append((s - end, evs[i - 1][2] if i else "-", evs[i][2], s))
        busy += max(0.0, e - max(s, end))
        end = max(end, e)
    span = (end - evs[0][0]) / 1000
    print(f"\none image under the profiler: wall {wall:.1f} ms, GPU span {span:.1f} ms, busy {busy / 1000:.1f} ms, "
          f"idle inside the span {idle / 1000:.1f} ms, outside it {wall - span:.1f} ms")
    print("| gap ms | kernel before | kernel after | host ops started in the gap (ms) |\n|---|---|---|---|")
    cpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    holes.append((evs[0][0] - min(e.time_range.start for e in cpu), "(image start)", evs[0][2], evs[0][0]))
    for g, before, after, at in sorted(holes, reverse=True)[:top]:
        ops: dict[str, float] = collections.defaultdict(float)
        for e in cpu:
            if at - g <= e.time_range.start < at and not e.name.startswith("cuda"):
                # with Python stacks: the functions that ran (children included), else aten ops' own time
                ops[e.name] += (e.cpu_time_total if stacks else e.self_cpu_time_total) / 1000
        ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:8 if stacks else 5]
        busiest = ", ".join(f"{n[-60:]} {t:.2f}" for n, t in ranked)
        print(f"| {g / 1000:.3f} | {before[:60]} | {after[:60]} | {busiest} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["fp8", "bf16"], default="fp8")
    ap.add_argument("--variants", action="store_true", help="also time the alternatives and list kernels")
    ap.add_argument("--gaps", action="store_true", help="also find where the GPU idles in one whole image")
    ap.add_argument("--stacks", action="store_true", help="with --gaps: name the Python functions in the gaps")
    a = ap.parse_args()
    pipe = build("flux", "full", "cuda", torch.bfloat16)
    opts = SpeedOptions(compile=True, fuse_qkv=True, fp8=a.mode == "fp8", cache_dir=CACHE)
    engine = ImageEngine.from_pipeline(pipe, "flux", "cuda", opts, vae_tiling_above=1536)
    engine.warmup(1024, 1024)
    times: dict[str, list[float]] = collections.defaultdict(list)
    encode, decode = pipe.encode_prompt, pipe.vae.decode
    pipe.encode_prompt = timed(times, "encode_prompt (CLIP + T5)", encode)
    pipe.vae.decode = timed(times, "vae.decode", decode)
    to_pil = engine_mod.to_pil
    engine_mod.to_pil = timed(times, "to PIL", to_pil)
    totals = []
    for seed in range(3):
        t0 = time.perf_counter()
        res = engine.generate([Job(PROMPT, 1024, 1024, 28, 3.5, seed=seed)])[0]
        totals.append((time.perf_counter() - t0, res.step_seconds))
    pipe.encode_prompt, pipe.vae.decode, engine_mod.to_pil = encode, decode, to_pil
    print(f"| stage ({a.mode}) | ms (median of 3) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) * 1000:.1f} |")
    total, step = min(totals)
    print(f"| whole image | {total * 1000:.1f} |\n| 28 x mean step | {28 * step * 1000:.1f} |")
    if a.gaps:
        gaps(engine, stacks=a.stacks)
    if a.variants:
        with torch.inference_mode():  # as in the pipeline (the text encoders' graphs need it)
            kernels("encode_prompt, service", lambda: pipe.encode_prompt(PROMPT, PROMPT, device="cuda",
                                                                         max_sequence_length=512))
            latents = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
            kernels("vae.decode, service", lambda: pipe.vae.decode(latents, return_dict=False)[0], top=20)
            variants(pipe, latents)


if __name__ == "__main__":
    main()
