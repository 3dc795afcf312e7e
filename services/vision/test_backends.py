"""Backend selection rules; the CUDA provider list is validated statically (no GPU here)."""

import pytest

from services.vision.backends import BackendError, BackendSpec, openvino_config, ort_providers, ort_threads


def test_openvino_pins_f32_on_cpu_and_sizes_streams():
    cfg = openvino_config(BackendSpec("openvino", "CPU", "f32", workers=4))
    assert cfg == {"PERFORMANCE_HINT": "THROUGHPUT", "PERFORMANCE_HINT_NUM_REQUESTS": "4",
                   "INFERENCE_PRECISION_HINT": "f32"}
    assert openvino_config(BackendSpec("openvino", "CPU", "f32", workers=1))["PERFORMANCE_HINT"] == "LATENCY"
    assert "INFERENCE_PRECISION_HINT" not in openvino_config(BackendSpec("openvino", "GPU", "auto"))
    assert "INFERENCE_PRECISION_HINT" not in openvino_config(BackendSpec("openvino", "AUTO", "f32"))


def test_openvino_hint_overrides_the_worker_count_rule():
    shared = openvino_config(BackendSpec("openvino", "CPU", "f32", workers=4, ov_hint="latency"))
    assert shared == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    streams = openvino_config(BackendSpec("openvino", "CPU", "f32", workers=1, ov_hint="throughput"))
    assert streams["PERFORMANCE_HINT"] == "THROUGHPUT" and streams["PERFORMANCE_HINT_NUM_REQUESTS"] == "1"


def test_cuda_providers_validated(report):
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    provs = ort_providers("CUDA:1", available)
    assert provs[0][0] == "CUDAExecutionProvider" and provs[0][1]["device_id"] == 1
    assert provs[-1] == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        ort_providers("CUDA", ["CPUExecutionProvider"])
    report.validated("vision: ONNX Runtime CUDA execution provider (onnxruntime-gpu)", "no NVIDIA GPU here")


def test_cpu_providers_and_threads():
    assert ort_providers("CPU", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError):
        ort_providers("GPU", ["CPUExecutionProvider"])
    assert ort_threads(BackendSpec("onnxruntime", "CPU", workers=1, ort_intra_threads=3)) == 3
    assert ort_threads(BackendSpec("onnxruntime", "CPU", workers=64)) == 1
