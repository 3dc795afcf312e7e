"""Inference backends: OpenVINO and ONNX Runtime behind one small interface.

`load_model(path, spec)` returns a `LoadedModel`; `model.runner()` gives a `Runner` bound to its own
inference request. Each pipeline worker owns one runner per model, so N workers run N inferences at
once without sharing mutable state (the official OpenVINO image hit "Infer Request is busy" by sharing
one implicit request between threads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class BackendError(RuntimeError):
    """The backend or device cannot run here (message says what to install or change)."""


@dataclass(frozen=True)
class BackendSpec:
    backend: str  # openvino | onnxruntime
    device: str  # CPU, GPU, AUTO, CUDA, CUDA:1 ...
    precision: str = "f32"  # OpenVINO only: f32 | bf16 | f16 | auto
    workers: int = 1  # parallel inference requests this model must serve
    ort_intra_threads: int | None = None
    # OpenVINO CPU scheduling: "latency" = one stream over all cores that the N inference requests
    # queue on; "throughput" = N single-core streams; "auto" = throughput when N > 1.
    ov_hint: str = "auto"


class Runner(Protocol):
    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]: ...


class LoadedModel(Protocol):
    input_names: list[str]
    output_names: list[str]
    batchable: bool  # the first input's batch dimension is dynamic: several items may go in one call

    def runner(self) -> Runner: ...

    def metadata(self, key: str) -> str | None: ...


# ---------------------------------------------------------------- OpenVINO
def openvino_config(spec: BackendSpec) -> dict[str, str]:
    """compile_model properties: precision pinned where asked, streams as `spec.ov_hint` says."""
    throughput = spec.ov_hint == "throughput" or (spec.ov_hint == "auto" and spec.workers > 1)
    cfg: dict[str, str] = {"PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
    if throughput:
        cfg["PERFORMANCE_HINT_NUM_REQUESTS"] = str(spec.workers)
    family = spec.device.split(":")[0].split(".")[0].upper()
    # On CPUs with AVX512_BF16/AMX, OpenVINO defaults to bf16, which changes OCR text; f32 is exact.
    if spec.precision != "auto" and family in ("CPU", "GPU", "NPU"):
        cfg["INFERENCE_PRECISION_HINT"] = spec.precision
    return cfg


class _OVRunner:
    def __init__(self, request: Any, n_out: int) -> None:
        self._req = request
        self._n_out = n_out

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self._req.infer(list(inputs))
        # Output tensors are views into the request's buffers: copy before the request is reused.
        return [np.array(self._req.get_output_tensor(i).data, copy=True) for i in range(self._n_out)]


class OpenVINOModel:
    def __init__(self, path: Path, spec: BackendSpec) -> None:
        import openvino as ov

        core = ov.Core()
        family = spec.device.split(":")[0].split(".")[0].upper()
        if family in ("CPU", "GPU", "NPU") and family not in _ov_families(core):
            raise BackendError(
                f"OpenVINO device {spec.device!r} is not available here "
                f"(available: {', '.join(core.available_devices)})"
            )
        self._model = core.read_model(str(path))
        self._compiled = core.compile_model(self._model, spec.device, openvino_config(spec))
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.output_names = [p.get_any_name() for p in self._compiled.outputs]
        self.batchable = self._compiled.inputs[0].get_partial_shape()[0].is_dynamic

    def runner(self) -> Runner:
        return _OVRunner(self._compiled.create_infer_request(), len(self.output_names))

    def metadata(self, key: str) -> str | None:
        rt = self._model.get_rt_info()
        if "framework" not in rt or key not in rt["framework"]:
            return None
        return str(rt["framework"][key].value)


def _ov_families(core: Any) -> set[str]:
    return {d.split(".")[0].upper() for d in core.available_devices}


# ---------------------------------------------------------------- ONNX Runtime
def ort_providers(device: str, available: Sequence[str]) -> list[Any]:
    """Provider list for `device`; CUDA needs onnxruntime-gpu (checked here, before any session)."""
    family, _, index = device.upper().partition(":")
    if family == "CPU":
        return ["CPUExecutionProvider"]
    if family == "CUDA":
        if "CUDAExecutionProvider" not in available:
            raise BackendError(
                "device CUDA needs onnxruntime-gpu (the CUDA image); this onnxruntime offers "
                + ", ".join(available)
            )
        opts = {"device_id": int(index or 0), "cudnn_conv_algo_search": "HEURISTIC"}
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    raise BackendError(f"ONNX Runtime device must be CPU or CUDA[:N], got {device!r}")


def ort_threads(spec: BackendSpec) -> int:
    if spec.ort_intra_threads:
        return spec.ort_intra_threads
    # Concurrent run() calls share the cores: give each worker its share instead of letting
    # every call spin up a full-width pool that fights the others.
    return max(1, (os.cpu_count() or 1) // max(1, spec.workers))


class _OrtRunner:
    def __init__(self, session: Any, inputs: list[str]) -> None:
        self._s = session
        self._inputs = inputs

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self._s.run(None, dict(zip(self._inputs, inputs, strict=True)))


class OrtModel:
    def __init__(self, path: Path, spec: BackendSpec) -> None:
        import onnxruntime as ort

        providers = ort_providers(spec.device, ort.get_available_providers())
        so = ort.SessionOptions()
        so.intra_op_num_threads = ort_threads(spec)
        so.inter_op_num_threads = 1
        # Busy-waiting worker threads steal the CPU from the other workers on small machines.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.batchable = not isinstance(self._session.get_inputs()[0].shape[0], int)

    def runner(self) -> Runner:
        # InferenceSession.run is thread-safe; one session serves every worker.
        return _OrtRunner(self._session, self.input_names)

    def metadata(self, key: str) -> str | None:
        return self._session.get_modelmeta().custom_metadata_map.get(key)


def load_model(path: Path, spec: BackendSpec) -> LoadedModel:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if spec.backend == "openvino":
        return OpenVINOModel(path, spec)
    if spec.backend == "onnxruntime":
        return OrtModel(path, spec)
    raise BackendError(f"unknown backend {spec.backend!r} (openvino or onnxruntime)")
