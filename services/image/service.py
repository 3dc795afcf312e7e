"""The service's state: config, device, lifecycle (lazy load / idle unload), queue and image store.

Environment (all optional): MODELS_DIR, IDLE_TIMEOUT_S, IMAGE_QUEUE_SIZE (default: config queue_size),
IMAGE_MAX_BATCH (default 1: batching measured no faster on an H100 at 1024px), IMAGE_URL_TTL_S (3600),
IMAGE_OUTPUT_DIR (<repo>/.run/image-outputs/<config>), IMAGE_COMPILE_CACHE (<repo>/.run/compile-cache/<config>),
IMAGE_CFG_BATCH_MAX_PIXELS (Ovis paired CFG up to this many pixels; default max_size^2 when cfg_batch),
IMAGE_FP8_IMPL (scaled_mm, our own, default | torchao; only with the config's fp8: true),
IMAGE_CUDA_GRAPHS (4: image shapes whose transformer forward is kept as a CUDA graph; 0 = none),
IMAGE_LOAD_DELAY_S (tests only: a slower load, to send requests while it runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.configs import Config
from gateway.configs.catalog import ROOT
from services.common.lifecycle import Lifecycle
from services.common.metrics import QUEUE_CAPACITY, QUEUE_DEPTH, track_lifecycle
from services.image import metrics
from services.image.jobs import Job, Result
from services.image.scheduler import Scheduler
from services.image.storage import ImageStore

log = logging.getLogger("image.service")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    models_dir: Path
    idle_timeout_s: float
    queue_size: int
    max_batch: int
    url_ttl_s: float
    output_dir: Path
    compile_cache: Path
    cfg_batch_max_pixels: int
    cuda_graph_shapes: int = 4

    @classmethod
    def from_env(cls, cfg: Config) -> Settings:
        d = cfg.diffusers
        run = Path(os.environ.get("PLATFORM_RUN_DIR", ROOT / ".run"))
        return cls(
            models_dir=Path(os.environ.get("MODELS_DIR", run / "models")),
            idle_timeout_s=float(os.environ.get("IDLE_TIMEOUT_S", cfg.idle_timeout_s)),
            queue_size=_env_int("IMAGE_QUEUE_SIZE", d.queue_size),
            max_batch=_env_int("IMAGE_MAX_BATCH", 1),
            url_ttl_s=float(os.environ.get("IMAGE_URL_TTL_S", 3600)),
            output_dir=Path(os.environ.get("IMAGE_OUTPUT_DIR", run / "image-outputs" / cfg.name)),
            compile_cache=Path(os.environ.get("IMAGE_COMPILE_CACHE", run / "compile-cache" / cfg.name)),
            # measured on an H100: paired CFG 9.08 s vs two passes 9.35 s at 1024px -> on at every size
            cfg_batch_max_pixels=_env_int("IMAGE_CFG_BATCH_MAX_PIXELS", d.max_size**2 if d.cfg_batch else 0),
            # image shapes whose transformer forward is kept as a CUDA graph (GPU, compile); 0 turns graphs off
            cuda_graph_shapes=_env_int("IMAGE_CUDA_GRAPHS", 4),
        )


def checkpoint_source(cfg: Config, models_dir: Path) -> str:
    """A folder under MODELS_DIR (built offline if the config has a builder), else the hub id."""
    local = Path(cfg.model.checkpoint)
    local = local if local.is_absolute() else models_dir / cfg.model.checkpoint
    if local.is_dir():
        return str(local)
    if cfg.model.build:
        from services.image.build import build_checkpoint

        log.info("building %s into %s", cfg.model.build, local)
        return str(build_checkpoint(cfg.model.build, local))
    return cfg.model.checkpoint


def default_loader(cfg: Config, device: str, settings: Settings) -> Any:
    """Load the pipeline and apply the speed path; on a GPU with compile, warm up (compile or read the
    cache) here so that the first request does not pay it and a failing kernel is caught at load."""
    from services.image import speed
    from services.image.engine import ImageEngine

    d = cfg.diffusers
    opts = speed.SpeedOptions(compile=d.compile, fuse_qkv=d.fuse_qkv, fp8=d.fp8, fp8_attention=d.fp8_attention,
                              cache_dir=settings.compile_cache, fp8_impl=os.environ.get("IMAGE_FP8_IMPL", "scaled_mm"),
                              cuda_graph_shapes=settings.cuda_graph_shapes)
    engine = ImageEngine.load(checkpoint_source(cfg, settings.models_dir), d.pipeline, device, d.dtype, opts,
                              max_batch=settings.max_batch, vae_tiling_above=d.vae_tiling_above,
                              cfg_batch_max_pixels=settings.cfg_batch_max_pixels)
    if d.compile and device.startswith("cuda"):
        log.info("warm-up took %.1f s", engine.warmup(d.default_size, d.default_size))
    log.info("loaded %s on %s: %s", cfg.name, device, engine.applied.as_dict())
    return engine


class ImageService:
    def __init__(self, cfg: Config, device: str, settings: Settings | None = None,
                 loader: Callable[[Config, str, Settings], Any] = default_loader) -> None:
        self.cfg = cfg
        self.device = device
        self.settings = settings or Settings.from_env(cfg)
        self._loader = loader
        self.lc = Lifecycle(cfg.name, self._load, self._unload, self.settings.idle_timeout_s)
        self.scheduler = Scheduler(self.lc, self.settings.queue_size, self.settings.max_batch, self._observe)
        self.store = ImageStore(self.settings.output_dir, cfg.name, self.settings.url_ttl_s)
        track_lifecycle(self.lc, cfg.name)
        metrics.init(cfg.name)
        if device.startswith("cuda"):
            metrics.track_gpu_memory(cfg.name)
        QUEUE_CAPACITY.labels(cfg.name).set(self.settings.queue_size)
        QUEUE_DEPTH.labels(cfg.name).set_function(lambda: float(self.scheduler.depth))

    async def _load(self) -> Any:
        delay = float(os.environ.get("IMAGE_LOAD_DELAY_S", 0))  # tests: widen the load window
        if delay:
            await asyncio.sleep(delay)
        return await asyncio.to_thread(self._loader, self.cfg, self.device, self.settings)

    async def _unload(self) -> None:
        engine = self.lc.model
        if engine is not None and hasattr(engine, "close"):
            await asyncio.to_thread(engine.close)

    def _observe(self, jobs: list[Job], results: list[Result]) -> None:
        images = sum(len(r.images) for r in results)
        metrics.observe_batch(self.cfg.name, images, results[0].seconds, results[0].step_seconds)

    async def generate(self, job: Job) -> Result:
        return await self.scheduler.submit(job)

    def info(self) -> dict[str, Any]:
        engine = self.lc.model
        return {"config": self.cfg.name, "model": self.cfg.model.served_name, "device": self.device,
                "queue": {"depth": self.scheduler.depth, "capacity": self.scheduler.capacity,
                          "max_batch": self.scheduler.max_batch},
                "speed": engine.applied.as_dict() if engine is not None and hasattr(engine, "applied") else None}
