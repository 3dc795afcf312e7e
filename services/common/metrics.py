"""Prometheus metrics every service shares; names and labels are the contract the dashboards use.

Labels are bounded: `config` (a config name), `task` (a fixed set per service), `state`, `kind`.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.common.lifecycle import Lifecycle, State

# Seconds to minutes: a model load ranges from a tiny CPU model to a 70B checkpoint.
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
# Milliseconds (a CLIP text embedding is ~1-3 ms, OCR tens of ms) up to minutes (a 2048 px image on a
# busy GPU, a long LLM answer): one bucket set spans both, so a per-task panel resolves each.
INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

SERVICE_STATE = Gauge("modelplat_service_state", "1 for the lifecycle state the model is in", ["config", "state"])
LOADS = Counter("modelplat_model_loads_total", "model loads", ["config"])
UNLOADS = Counter("modelplat_model_unloads_total", "model unloads", ["config"])
LOAD_FAILURES = Counter("modelplat_model_load_failures_total", "failed model loads", ["config"])
LOAD_SECONDS = Histogram("modelplat_model_load_seconds", "time to load a model", ["config"], buckets=LOAD_BUCKETS)
UNLOAD_SECONDS = Histogram(
    "modelplat_model_unload_seconds", "time to unload a model", ["config"], buckets=LOAD_BUCKETS
)
QUEUE_DEPTH = Gauge("modelplat_queue_depth", "requests waiting or running in the service", ["config"])
QUEUE_CAPACITY = Gauge("modelplat_queue_capacity", "requests the service admits before rejecting", ["config"])
INFERENCE_SECONDS = Histogram(
    "modelplat_inference_seconds", "inference time per request", ["config", "task"], buckets=INFER_BUCKETS
)
INFERENCE_ERRORS = Counter("modelplat_inference_errors_total", "failed inferences", ["config", "task", "kind"])
GPU_MEMORY_USED = Gauge("modelplat_gpu_memory_used_bytes", "GPU memory in use", ["config", "gpu"])
GPU_MEMORY_TOTAL = Gauge("modelplat_gpu_memory_total_bytes", "GPU memory in total", ["config", "gpu"])


def track_lifecycle(lc: Lifecycle, config: str) -> None:
    """Publish a Lifecycle's state and transitions under `config`."""

    def publish_state() -> None:
        for s in State:
            SERVICE_STATE.labels(config, s.value).set(1 if lc.state == s else 0)

    def on_event(event: str, seconds: float) -> None:
        if event == "load":
            LOADS.labels(config).inc()
            LOAD_SECONDS.labels(config).observe(seconds)
        elif event == "unload":
            UNLOADS.labels(config).inc()
            UNLOAD_SECONDS.labels(config).observe(seconds)
        else:
            LOAD_FAILURES.labels(config).inc()
        publish_state()

    lc.on_event(on_event)
    LOADS.labels(config)
    UNLOADS.labels(config)
    LOAD_FAILURES.labels(config)
    publish_state()
    # Transitions into loading/unloading happen between events: sample the state at scrape time too.
    for s in State:
        SERVICE_STATE.labels(config, s.value).set_function(lambda s=s: 1.0 if lc.state == s else 0.0)
    track_gpu_memory(config)


def visible_gpus(nvml: Any) -> list[tuple[str, Any]]:
    """(index, handle) of the GPUs this process may use: NVML lists them all, CUDA_VISIBLE_DEVICES narrows."""
    handles = [(str(i), nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
    wanted = [w.strip() for w in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if w.strip()]
    if not wanted:
        return handles
    def uuid(h: Any) -> str:
        u = nvml.nvmlDeviceGetUUID(h)
        return u.decode() if isinstance(u, bytes) else u
    return [(i, h) for i, h in handles if i in wanted or uuid(h) in wanted]


def track_gpu_memory(config: str) -> bool:
    """Publish used/total memory of each visible NVIDIA GPU, read through NVML at scrape time.

    NVML (nvidia-ml-py, shipped with vLLM and the CUDA torch images) needs no CUDA context, so the
    vLLM supervisor can report the GPU its child uses. Without NVML or a GPU this does nothing.
    """
    try:
        import pynvml as nvml  # type: ignore[import-not-found]

        nvml.nvmlInit()
        gpus = visible_gpus(nvml)
    except Exception:  # no module, no driver, no GPU: nothing to publish
        return False

    def read(handle: Any, field: str) -> float:
        try:
            return float(getattr(nvml.nvmlDeviceGetMemoryInfo(handle), field))
        except Exception:  # a driver hiccup must not break the whole /metrics answer
            return float("nan")

    for index, handle in gpus:
        GPU_MEMORY_USED.labels(config, index).set_function(lambda h=handle: read(h, "used"))
        GPU_MEMORY_TOTAL.labels(config, index).set_function(lambda h=handle: read(h, "total"))
    return bool(gpus)
