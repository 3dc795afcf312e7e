"""Shared service metrics: lifecycle state and transitions, GPU memory through a stand-in NVML."""

import sys
import types

from prometheus_client import REGISTRY

from services.common import metrics
from services.common.lifecycle import Lifecycle


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_lifecycle_state_and_transitions():
    async def load():
        return "model"

    async def unload():
        return None

    lc = Lifecycle("metrics-test", load, unload)
    metrics.track_lifecycle(lc, "metrics-test")
    assert value("modelplat_service_state", config="metrics-test", state="unloaded") == 1
    await lc.load()
    assert value("modelplat_service_state", config="metrics-test", state="ready") == 1
    assert value("modelplat_service_state", config="metrics-test", state="unloaded") == 0
    await lc.unload()
    assert value("modelplat_model_loads_total", config="metrics-test") == 1
    assert value("modelplat_model_unloads_total", config="metrics-test") == 1
    assert value("modelplat_model_load_seconds_count", config="metrics-test") == 1


def fake_nvml(count: int) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)
    return nvml


def test_gpu_memory_from_nvml_narrowed_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,GPU-3")
    assert metrics.track_gpu_memory("gpu-test")
    assert value("modelplat_gpu_memory_used_bytes", config="gpu-test", gpu="1") == 2 * 2**30
    assert value("modelplat_gpu_memory_total_bytes", config="gpu-test", gpu="3") == 80 * 2**30
    assert value("modelplat_gpu_memory_used_bytes", config="gpu-test", gpu="0") is None


def test_no_nvml_publishes_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert not metrics.track_gpu_memory("cpu-test")
    assert value("modelplat_gpu_memory_used_bytes", config="cpu-test", gpu="0") is None
