"""One loaded diffusers pipeline and how the service calls it: batches of same-shaped jobs, per-image
seeds, per-step timing, VAE tiling for large sizes, Ovis CFG pairing. No web code here: the GPU benchmark
drives this class directly, so what it measures is the service's own path.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from services.image import cfg_batch, modulation, speed
from services.image.jobs import MAX_SEED, Job, Result

log = logging.getLogger("image.engine")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def to_pil(images: torch.Tensor) -> list[Any]:
    """diffusers' "pil" output from its "pt" one (denormalised, (batch, 3, h, w)), with the same arithmetic
    (float32 x 255, round half to even, uint8) done where the tensor is. diffusers copies the float image to
    the host and converts it with numpy: 12-17 ms of a 1024px image on the H100 hosts
    (benchmarks/image_gpu_other.py); here small kernels run and only the bytes cross, already in PIL's
    row-major RGB order (a channel-first copy left numpy ~1-3 ms of transposing on the host)."""
    from PIL import Image

    u8 = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [Image.fromarray(img) for img in u8]


def initial_latents(pipe: Any, height: int, width: int, seeds: list[int], device: str,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """The noise FluxPipeline / OvisImagePipeline.prepare_latents would draw with one CPU generator per image
    (so that a seed gives the same image on any device), packed as they pack it; handed to the pipeline as
    `latents`. Drawn in float32 and rounded: the same values as drawing in bf16 (tested), but torch's CPU
    normal_ takes 8 ms in bf16 for one 1024px FLUX latent against 1 ms in float32, and the GPU sat idle
    meanwhile (6.6 ms of a 3.56 s bf16 image on an H100: benchmarks/image_gpu_other.py --gaps). The rounding
    to the model's dtype happens on the device, after the copy: the same round-to-nearest-even, without the
    host's conversion (copies took 3.7 ms of that idle start on one H100 host). `dtype`: the transformer's,
    which the engine looks up once: diffusers' `ModelMixin.dtype` walks all of FLUX's 1,279 submodules for
    hooks first (2.7 ms on this workplace's CPU; a 3-4.7 ms gap after the noise's copy on the H100s).
    Each image's noise is drawn straight into its slice of one buffer (`normal_` on a contiguous slice gives
    randn's values), not concatenated afterwards; for a GPU the buffer is page-locked (PyTorch caches those
    blocks), so the copy neither stages through a bounce buffer nor holds the host."""
    channels = pipe.transformer.config.in_channels // 4
    h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
    w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
    cuda = str(device).startswith("cuda")
    noise = torch.empty((len(seeds), channels, h, w), dtype=torch.float32, pin_memory=cuda)
    for i, s in enumerate(seeds):
        noise[i:i + 1].normal_(generator=torch.Generator("cpu").manual_seed(s))
    noise = noise.to(device, non_blocking=cuda).to(pipe.transformer.dtype if dtype is None else dtype)
    return pipe._pack_latents(noise, len(seeds), channels, h, w)


class StepTimer:
    """Mean time per denoising step without a device sync in the loop (events on CUDA)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.marks: list[Any] = []

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        return {}

    def mean(self, total: float, steps: int) -> float:
        if len(self.marks) < 2:
            return total / max(steps, 1)
        if self.cuda:
            torch.cuda.synchronize()
            span = self.marks[0].elapsed_time(self.marks[-1]) / 1000
        else:
            span = self.marks[-1] - self.marks[0]
        return span / (len(self.marks) - 1)


class ImageEngine:
    def __init__(self, pipe: Any, family: str, device: str, *, max_batch: int = 1,
                 vae_tiling_above: int | None = None, cfg_batch_max_pixels: int = 0,
                 applied: speed.Applied | None = None) -> None:
        self.pipe = pipe
        self.family = family
        self.device = device
        self.max_batch = max(1, max_batch)
        self.vae_tiling_above = vae_tiling_above
        self.cfg_batch_max_pixels = cfg_batch_max_pixels
        self.applied = applied or speed.Applied()
        self.latent_dtype = pipe.transformer.dtype  # looked up once: see initial_latents
        pipe.set_progress_bar_config(disable=True)

    # ---- construction ----
    @classmethod
    def load(cls, source: str | Path, family: str, device: str, dtype: str, opts: speed.SpeedOptions,
             **kwargs: Any) -> ImageEngine:
        import diffusers

        pipe_cls = {"flux": diffusers.FluxPipeline, "ovis": diffusers.OvisImagePipeline}[family]
        pipe = pipe_cls.from_pretrained(str(source), dtype=DTYPES[dtype])
        return cls.from_pipeline(pipe.to(device), family, device, opts, **kwargs)

    @classmethod
    def from_pipeline(cls, pipe: Any, family: str, device: str, opts: speed.SpeedOptions,
                      **kwargs: Any) -> ImageEngine:
        applied = speed.apply(pipe, opts, device)
        return cls(pipe, family, device, applied=applied, **kwargs)

    def warmup(self, width: int, height: int, steps: int = 2) -> float:
        """One short generation: compiles (or loads compiled kernels from the cache) before real traffic."""
        t0 = time.perf_counter()
        job = Job("warm-up", width, height, steps, 5.0 if self.family == "ovis" else 3.5, seed=0)
        try:
            self.generate([job])
        except Exception:
            if self.applied.attention == "native":
                raise
            # A faster attention kernel that does not trace under this torch: keep compile, drop the kernel.
            log.exception("warm-up failed with attention %s; retrying with native", self.applied.attention)
            self.pipe.transformer.set_attention_backend("native")
            self.applied.attention = "native"
            self.reset_compiled()
            self.generate([job])
        return time.perf_counter() - t0

    def reset_compiled(self) -> None:
        """Drop compiled code and captured CUDA graphs: the next calls trace the forward as it is now."""
        torch._dynamo.reset()
        reset = getattr(self.pipe.transformer.__dict__.get("forward"), "reset", None)
        if reset is not None:
            reset()

    def close(self) -> None:
        self.pipe = None
        gc.collect()
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # ---- generation ----
    def generate(self, jobs: list[Job]) -> list[Result]:
        """All jobs must share a batch_key. Images are made max_batch at a time; each image has its own
        seed (job seed + index), so a result does not depend on what it was batched with."""
        if len({j.batch_key for j in jobs}) != 1:
            raise ValueError("jobs in one call must share size, steps, guidance and negative prompt")
        plan = [(i, j.prompt, seed) for i, j in enumerate(jobs) for seed in self._seeds(j)]
        images: list[list[Any]] = [[] for _ in jobs]
        seeds: list[list[int]] = [[] for _ in jobs]
        t0 = time.perf_counter()
        step_times = []
        for start in range(0, len(plan), self.max_batch):
            chunk = plan[start:start + self.max_batch]
            out, step_s = self._call(jobs[0], [p for _, p, _ in chunk], [s for _, _, s in chunk])
            step_times.append(step_s)
            for (idx, _, seed), img in zip(chunk, out, strict=True):
                images[idx].append(img)
                seeds[idx].append(seed)
        total = time.perf_counter() - t0
        step_s = sum(step_times) / len(step_times)
        batch = min(self.max_batch, len(plan))
        return [Result(images[i], seeds[i], total, step_s, batch) for i in range(len(jobs))]

    @staticmethod
    def _seeds(job: Job) -> list[int]:
        base = job.seed if job.seed is not None else random.randint(0, MAX_SEED)
        return [(base + k) % (MAX_SEED + 1) for k in range(job.n)]

    def _call(self, job: Job, prompts: list[str], seeds: list[int]) -> tuple[list[Any], float]:
        self._set_vae_tiling(max(job.width, job.height))
        timer = StepTimer(self.device)
        kwargs: dict[str, Any] = dict(
            prompt=prompts, height=job.height, width=job.width, num_inference_steps=job.steps,
            guidance_scale=job.guidance, callback_on_step_end=timer, output_type="pt",
        )
        if self.family == "ovis":
            kwargs["negative_prompt"] = [job.negative_prompt] * len(prompts)
        t0 = time.perf_counter()
        with torch.inference_mode():
            kwargs["latents"] = initial_latents(self.pipe, job.height, job.width, seeds, self.device,
                                                self.latent_dtype)
            out = self._run(job, kwargs)
            images = to_pil(out)
        total = time.perf_counter() - t0
        return images, timer.mean(total, job.steps)

    def _run(self, job: Job, kwargs: dict[str, Any]) -> torch.Tensor:
        pipe = self.pipe
        with modulation.schedule(pipe) as tables:
            with cfg_batch.paired(pipe) if self._pair_cfg(job) else contextlib.nullcontext():
                out = pipe(**kwargs).images
        if tables is not None and tables.missed():
            # a forward whose timestep was not in the schedule read a wrong row: never hand that image out
            log.error("a forward's timestep was not in the scheduler's schedule: modulation tables off")
            pipe.transformer.step_modulation.enabled = False
            kwargs["callback_on_step_end"].marks.clear()
            return self._run(job, kwargs)
        return out

    def _pair_cfg(self, job: Job) -> bool:
        return (self.family == "ovis" and job.guidance > 1
                and job.width * job.height <= self.cfg_batch_max_pixels)

    def _set_vae_tiling(self, side: int) -> None:
        want = self.vae_tiling_above is not None and side > self.vae_tiling_above
        vae = self.pipe.vae
        if want != bool(getattr(vae, "use_tiling", False)):
            (vae.enable_tiling if want else vae.disable_tiling)()
