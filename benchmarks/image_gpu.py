"""GPU benchmark for the image service: plain diffusers pipeline (baseline) vs the service's optimised path.

Builds full-size random-weight pipelines directly on the GPU in bf16 (FLUX.1-dev: 12B transformer + T5-XXL
+ CLIP-L + VAE; Ovis-Image-7B: transformer + Qwen3-shaped 2B encoder + VAE). The time per step does not
depend on the weight values. Text encoders and the VAE decode are inside every timed image.

    python benchmarks/image_gpu.py --family flux --mode bf16 --restart   # + first image in a new process
    python benchmarks/image_gpu.py --family ovis --mode fp8

Prints a table (seconds per image, per step, ratio to the baseline measured in the same run) and writes
JSON to $OUT (or /tmp). `--restart` then starts a fresh process with the same compile cache and reports
the time from process start to the first image (weights are built, not read from disk).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
OUT = Path(os.environ.get("OUT", "/tmp"))
CACHE = Path(os.environ.get("IMAGE_COMPILE_CACHE", "/tmp/image-compile-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from services.image.engine import ImageEngine, Job, StepTimer  # noqa: E402
from services.image.speed import SpeedOptions, time_cuda  # noqa: E402
from services.image.tiny_pipelines import build, build_flux_transformer  # noqa: E402

DEV = {"device": "cuda", "scale": "full"}  # --dry: tiny pipelines on the CPU, to check the script itself
PROMPT = "a photo of a cat sitting on a red sofa"
DEFAULTS = {"flux": {"steps": 28, "guidance": 3.5}, "ovis": {"steps": 50, "guidance": 5.0}}
# The H100 that the issue's figures come from (issue 5; ../shared/reference/gpu/README.md): a bf16 8192^3
# matmul, and one step of the plain diffusers FLUX.1-dev transformer at 1024px, eager and with regional compile.
ISSUE_BOARD = {"matmul_tflops": 788.0, "eager_ms": 182.0, "regional_ms": 136.0}
rows: list[dict] = []


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", flush=True)


def sync() -> None:
    if DEV["device"] == "cuda":
        torch.cuda.synchronize()


def record(family: str, variant: str, s_img: float, s_step: float, steps: int, **extra: object) -> None:
    rows.append({"family": family, "variant": variant, "s_image": s_img, "s_step": s_step,
                 "other_s": s_img - steps * s_step, **extra})
    log(f"{family} {variant}: {s_img:.3f} s/image, {s_step * 1000:.1f} ms/step {extra or ''}")
    (OUT / "image_gpu.json").write_text(json.dumps(rows, indent=1))


def plain_pipeline(pipe, family: str, size: int, steps: int, images: int) -> tuple[float, float]:
    """The baseline: the stock diffusers call, eager, default attention, as a user would write it."""
    kw = dict(prompt=PROMPT, height=size, width=size, num_inference_steps=steps,
              guidance_scale=DEFAULTS[family]["guidance"])
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pipe(**kw, generator=torch.Generator("cpu").manual_seed(0))  # warm-up (cuBLAS/cuDNN init)
        totals, per_step = [], []
        for i in range(images):
            timer = StepTimer(DEV["device"])
            sync()
            t0 = time.perf_counter()
            pipe(**kw, generator=torch.Generator("cpu").manual_seed(i), callback_on_step_end=timer)
            sync()
            totals.append(time.perf_counter() - t0)
            per_step.append(timer.mean(totals[-1], steps))
    return min(totals), min(per_step)


def engine_images(engine: ImageEngine, family: str, size: int, steps: int, images: int) -> tuple[float, float]:
    job = Job(PROMPT, size, size, steps, DEFAULTS[family]["guidance"], seed=0)
    totals, per_step = [], []
    for _ in range(images):
        sync()
        t0 = time.perf_counter()
        res = engine.generate([job])[0]
        sync()
        totals.append(time.perf_counter() - t0)
        per_step.append(res.step_seconds)
    return min(totals), min(per_step)


def board_anchor() -> dict:
    """This board against the issue's H100, measured as the issue measured it, right before the images: lent
    H100s all run FLUX at their 700 W limit, and their step times differ by ~5 %. The regional-compile ratio
    (a compiled, compute-bound step like the service's) scales this run's image times to the issue's board."""
    res = {"matmul_tflops": round(matmul_tflops(), 1), **flux_reference_steps()}
    torch._dynamo.reset()  # the compiled blocks hold the anchor's transformer
    torch.cuda.empty_cache()
    res["vs_issue_board"] = round(res["regional_ms"] / ISSUE_BOARD["regional_ms"], 4)
    log(f"board anchor: {res} (the issue's H100: {ISSUE_BOARD})")
    rows.append({"family": "flux", "variant": "board anchor", **res})
    return res


def matmul_tflops(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / time_cuda(lambda: a @ b, reps=10, warmup=3, calls=10) / 1e9


def flux_reference_steps() -> dict:
    """One step of the plain diffusers transformer at 1024px (4096 image + 512 text tokens): eager, then with
    fused QKV and diffusers' regional compile, the issue's 182 and 136 ms configurations."""
    tr = build_flux_transformer("full", "cuda", torch.bfloat16)
    kw = dict(hidden_states=torch.randn(1, 4096, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
              pooled_projections=torch.randn(1, 768), timestep=torch.full((1,), 0.5),
              img_ids=torch.randn(4096, 3), txt_ids=torch.zeros(512, 3), guidance=torch.full((1,), 3.5))
    kw = {k: v.to("cuda", torch.bfloat16) for k, v in kw.items()}

    def step():
        with torch.inference_mode():
            tr(**kw, return_dict=False)

    eager = time_cuda(step, reps=8, warmup=3)
    tr.fuse_qkv_projections()
    tr.compile_repeated_blocks(fullgraph=True)
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    regional = time_cuda(step, reps=8, warmup=2)
    return {"eager_ms": round(eager, 1), "regional_ms": round(regional, 1), "regional_first_call_s": round(first, 1)}


def options(mode: str) -> SpeedOptions:
    if DEV["device"] == "cpu":
        return SpeedOptions(fuse_qkv=True)
    return SpeedOptions(compile=True, fuse_qkv=True, fp8=mode.startswith("fp8"), attention="auto", cache_dir=CACHE,
                        fp8_impl="torchao" if mode == "fp8-torchao" else "scaled_mm")


def run_family(args: argparse.Namespace, family: str) -> None:
    size, steps = args.size, args.steps or DEFAULTS[family]["steps"]
    t0 = time.perf_counter()
    pipe = build(family, DEV["scale"], DEV["device"], torch.bfloat16)
    nparams = sum(p.numel() for c in (pipe.transformer, pipe.vae) for p in c.parameters()) / 1e9
    log(f"{family}: built on GPU in {time.perf_counter() - t0:.1f}s (transformer+vae {nparams:.1f}B params), "
        f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB")
    if not args.skip_baseline:
        s_img, s_step = plain_pipeline(pipe, family, size, steps, args.images)
        record(family, "plain diffusers (eager bf16)", s_img, s_step, steps)
    pixels = size * size if family == "ovis" else 0
    variants = [("paired CFG", pixels), ("two CFG passes", 0)] if family == "ovis" and args.cfg_both else [
        ("", pixels if family == "ovis" and args.cfg_pair else 0)]
    engine = ImageEngine.from_pipeline(pipe, family, DEV["device"], options(args.mode), vae_tiling_above=1536)
    log(f"{family}: speed path {engine.applied.as_dict()}")
    for label, max_pixels in variants:
        engine.cfg_batch_max_pixels = max_pixels
        warm = engine.warmup(size, size)
        stats = dict(torch._dynamo.utils.counters["stats"])
        log(f"{family}: warm-up (compile, 2 steps) {warm:.1f}s; dynamo {stats}")
        s_img, s_step = engine_images(engine, family, size, steps, args.images)
        record(family, f"service {args.mode} {label}".strip(), s_img, s_step, steps, compile_s=round(warm, 1),
               attention=engine.applied.attention)
    if args.tables_too:
        compare_tables(engine, family, size, steps, args)
    if args.bf16_attention_too and engine.applied.attention == "cudnn-fp8":
        compare_bf16_attention(engine, family, size, steps, args)
    engine.close()
    del pipe, engine
    torch._dynamo.reset()  # compiled code and its guards hold the modules: free them for the next family or restart
    if DEV["device"] == "cuda":
        torch.cuda.empty_cache()
        log(f"{family}: freed, {torch.cuda.memory_allocated() / 2**30:.1f} GiB still allocated")


def compare_bf16_attention(engine: ImageEngine, family: str, size: int, steps: int, args: argparse.Namespace) -> None:
    """The same engine with its attention back on PyTorch's bf16 cuDNN kernel (the fp8 mode before
    services/image/attention_fp8.py): the fp8 attention's gain measured in one run, on one machine."""
    engine.pipe.transformer.set_attention_backend("_native_cudnn")
    engine.applied.attention = "_native_cudnn"
    engine.reset_compiled()
    warm = engine.warmup(size, size)
    s_img, s_step = engine_images(engine, family, size, steps, args.images)
    record(family, f"service {args.mode}, bf16 attention", s_img, s_step, steps, compile_s=round(warm, 1),
           attention="_native_cudnn")


def compare_tables(engine: ImageEngine, family: str, size: int, steps: int, args: argparse.Namespace) -> None:
    """A/B/A in one engine: the adaptive norms' rows from the per-image table (services/image/modulation.py),
    then computed in every forward (one matmul over all the norms' weights), then the table again."""
    mod = engine.pipe.transformer.step_modulation
    for enabled, label in ((False, "tables off (rows each forward)"), (True, "tables on, again")):
        mod.enabled = enabled
        s_img, s_step = engine_images(engine, family, size, steps, args.images)
        record(family, f"service {args.mode}, {label}", s_img, s_step, steps)


def restart_child(args: argparse.Namespace, family: str) -> None:
    """A fresh process: build (stands in for reading cached weights), apply the speed path with the warm
    compile cache, first image. Reports seconds since this process started."""
    size, steps = args.size, args.steps or DEFAULTS[family]["steps"]
    pipe = build(family, DEV["scale"], DEV["device"], torch.bfloat16)
    t_built = time.perf_counter() - T_START
    engine = ImageEngine.from_pipeline(pipe, family, DEV["device"], options(args.mode), vae_tiling_above=1536,
                                       cfg_batch_max_pixels=size * size if args.cfg_pair else 0)
    t_applied = time.perf_counter() - T_START
    firsts = time_first_calls(pipe)
    engine.generate([Job(PROMPT, size, size, steps, DEFAULTS[family]["guidance"], seed=0)])
    sync()
    total = time.perf_counter() - T_START
    s_img, _ = engine_images(engine, family, size, steps, 1)
    print(json.dumps({"restart_first_image_s": round(total, 1), "imports_and_build_s": round(t_built, 1),
                      "speed_path_s": round(t_applied - t_built, 1), "first_calls_s": firsts,
                      "steady_s_image": round(s_img, 3)}), flush=True)


def time_first_calls(pipe) -> dict[str, float]:
    """Wall seconds of the first call of each stage in the first image (compiled code loaded from the cache,
    graphs captured): where a restart's time goes. The dict fills in as the stages run."""
    firsts: dict[str, float] = {}

    def timed(name: str, obj, attr: str) -> None:
        inner = getattr(obj, attr)

        def call(*a, **kw):
            if name in firsts:
                return inner(*a, **kw)
            sync()
            t = time.perf_counter()
            out = inner(*a, **kw)
            sync()
            firsts[name] = round(time.perf_counter() - t, 1)
            return out

        setattr(obj, attr, call)

    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            timed(name, getattr(pipe, name), "forward")
    timed("transformer", pipe.transformer, "forward")
    timed("vae_decode", pipe.vae, "decode")
    return firsts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["flux", "ovis", "both"], default="both")
    ap.add_argument("--mode", choices=["bf16", "fp8", "fp8-torchao"], default="bf16")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=0, help="default: the model's (28 FLUX, 50 Ovis)")
    ap.add_argument("--images", type=int, default=2, help="timed images per variant (best is reported)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--cfg-pair", action="store_true", help="Ovis: cond+uncond in one forward")
    ap.add_argument("--cfg-both", action="store_true", help="Ovis: time paired and two-pass CFG")
    ap.add_argument("--bf16-attention-too", action="store_true",
                    help="fp8: then time the same engine with bf16 attention")
    ap.add_argument("--tables-too", action="store_true", help="then the same engine without modulation tables")
    ap.add_argument("--restart", action="store_true", help="then time the first image in a fresh process")
    ap.add_argument("--anchor", action="store_true",
                    help="first measure this board as the issue measured its H100, and scale the images to it")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dry", action="store_true", help="tiny pipelines on the CPU: checks the script only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("image").setLevel(logging.INFO)  # the attention kernel timings, fallbacks
    if args.dry:
        DEV.update(device="cpu", scale="tiny")
    families = ["flux", "ovis"] if args.family == "both" else [args.family]
    if args.child:
        restart_child(args, families[0])
        return
    gpu = torch.cuda.get_device_name(0) if DEV["device"] == "cuda" else "cpu (dry run)"
    log(f"torch {torch.__version__}, {gpu}, mode {args.mode}, cache {CACHE}")
    if args.anchor and DEV["device"] == "cuda":
        board_anchor()
    for family in families:
        run_family(args, family)
        if args.restart:
            cmd = [sys.executable, __file__, "--child", "--family", family, "--mode", args.mode,
                   "--size", str(args.size), "--steps", str(args.steps)]
            cmd += ["--cfg-pair"] * args.cfg_pair + ["--dry"] * args.dry
            env = dict(os.environ, IMAGE_COMPILE_CACHE=str(CACHE))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = (out.stdout.strip().splitlines() or ["{}"])[-1]
            log(f"{family} restart with warm cache: {line}" + ("" if out.returncode == 0 else out.stderr[-2000:]))
            rows.append({"family": family, "variant": f"restart {args.mode}", **json.loads(line or "{}")})
    print_table()


def print_table() -> None:
    base = {r["family"]: r["s_image"] for r in rows if r["variant"].startswith("plain")}
    print("\n| family | variant | s/image | ms/step | other s (text enc+VAE+overhead) | vs baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "s_image" not in r:
            rest = {k: v for k, v in r.items() if k not in ("family", "variant")}
            print(f"| {r['family']} | {r['variant']} | {json.dumps(rest)} |")
            continue
        b = base.get(r["family"])
        ratio = f"{b / r['s_image']:.2f}x" if b and r["s_image"] else "- (no baseline this run)"
        print(f"| {r['family']} | {r['variant']} | {r['s_image']:.3f} | {r['s_step'] * 1000:.1f} | "
              f"{r['other_s']:.3f} | {ratio} |")
    anchor = next((r for r in rows if r["variant"] == "board anchor"), None)
    if anchor:  # the steps are 97 % of an image, so the step ratio scales the whole image
        k = anchor["vs_issue_board"]
        print(f"\nThis board's regional-compile step: {anchor['regional_ms']} ms against the issue's "
              f"{ISSUE_BOARD['regional_ms']:.0f} ({k:.3f}x). Images scaled to the issue's H100:")
        for r in rows:
            if r["family"] == "flux" and "s_image" in r:
                print(f"| flux | {r['variant']} | {r['s_image']:.3f} s here | {r['s_image'] / k:.3f} s there |")
    (OUT / "image_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
