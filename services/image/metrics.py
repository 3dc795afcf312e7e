"""The image service's own Prometheus metrics (`modelplat_image_*`), next to the shared ones in
services/common/metrics.py (lifecycle, queue depth, inference time and errors, GPU memory).
Labels are bounded: config, api (openai|simple), kind (a fixed set of error kinds)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common import metrics as common

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 16)

IMAGES = Counter("modelplat_image_images_total", "images generated", ["config", "api"])
REQUESTS = Counter("modelplat_image_requests_total", "image requests by outcome", ["config", "api", "outcome"])
ERRORS = Counter("modelplat_image_errors_total", "failed image requests", ["config", "kind"])
STEP_SECONDS = Histogram("modelplat_image_step_seconds", "time of one denoising step", ["config"],
                         buckets=STEP_BUCKETS)
IMAGE_SECONDS = Histogram("modelplat_image_seconds_per_image", "pipeline time per image (batch time / images)",
                          ["config"], buckets=common.INFER_BUCKETS)
BATCH_IMAGES = Histogram("modelplat_image_batch_images", "images per pipeline call", ["config"],
                         buckets=BATCH_BUCKETS)
ERROR_KINDS = ("bad_request", "queue_full", "engine", "not_found")


def init(config: str) -> None:
    """Create every labelled child up front so dashboards see zeros, not gaps."""
    for api in ("openai", "simple"):
        IMAGES.labels(config, api)
        for outcome in ("ok", "error"):
            REQUESTS.labels(config, api, outcome)
    for kind in ERROR_KINDS:
        ERRORS.labels(config, kind)


def error(config: str, kind: str) -> None:
    ERRORS.labels(config, kind).inc()
    common.INFERENCE_ERRORS.labels(config, "image", kind).inc()


def observe_batch(config: str, images: int, seconds: float, step_seconds: float) -> None:
    # The shared per-task histogram feeds the platform dashboards; the image-specific ones add detail.
    common.INFERENCE_SECONDS.labels(config, "generate").observe(seconds)
    BATCH_IMAGES.labels(config).observe(images)
    STEP_SECONDS.labels(config).observe(step_seconds)
    for _ in range(images):
        IMAGE_SECONDS.labels(config).observe(seconds / max(images, 1))


def track_gpu_memory(config: str) -> None:
    """GPU memory gauges read at scrape time; zero until CUDA is initialised by a load."""
    import torch

    if not torch.cuda.is_available():
        return

    def used() -> float:
        if not torch.cuda.is_initialized():
            return 0.0
        free, total = torch.cuda.mem_get_info()
        return float(total - free)

    def total() -> float:
        return float(torch.cuda.mem_get_info()[1]) if torch.cuda.is_initialized() else 0.0

    common.GPU_MEMORY_USED.labels(config, "0").set_function(used)
    common.GPU_MEMORY_TOTAL.labels(config, "0").set_function(total)
