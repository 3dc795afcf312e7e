"""Matmuls through cuBLASLt with the algorithm picked by timing every candidate, not the heuristic's first.

Why: PyTorch runs the first algorithm cuBLASLt's heuristic proposes. On an H100 that choice leaves speed on
the table for some of the image transformers' shapes (benchmarks/image_gpu_gemm.py measures each shape, the
heuristic's pick against the timed best). cuBLASLt is reached through ctypes, already loaded by PyTorch,
so there is nothing to build. Each (shape, kind) gets one `Matmul`: descriptors made once, candidates timed
once on first use, then every call is a single cublasLtMatmul on the current stream.

y (m, n) = x (m, k) @ w (n, k)^T [+ bias], written as cuBLAS's column-major y^T = w x^T ("TN", which fp8
on Hopper requires). bf16 in and out, or e4m3 in with float32 scales per row of x and per row of w
(cuBLASLt's outer-vector scaling, as torch._scaled_mm's row-wise mode), bf16 out.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import torch

# cublasLt.h / library_types.h values (stable across CUDA 12.8-13.x)
_R_32F, _R_16BF, _R_8F_E4M3 = 0, 14, 28
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_A_SCALE_POINTER, _DESC_B_SCALE_POINTER, _DESC_FAST_ACCUM, _DESC_BIAS_DATA_TYPE = 17, 18, 25, 26
_DESC_A_SCALE_MODE, _DESC_B_SCALE_MODE = 31, 32
_SCALE_OUTER_VEC_32F = 3
_EPILOGUE_BIAS = 4
_PREF_MAX_WORKSPACE_BYTES = 1
WORKSPACE_BYTES = 32 << 20  # what cuBLAS recommends on Hopper
MAX_CANDIDATES = 32


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Heuristic(ctypes.Structure):
    _fields_ = [("algo", _Algo), ("workspace", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


@functools.cache
def _lib() -> ctypes.CDLL:
    """PyTorch has loaded cuBLASLt already; dlopen by soname returns that copy."""
    torch.cuda.init()
    names = ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        names += [str(p) for p in Path(folder).glob("*/lib/libcublasLt.so*")]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("cuBLASLt not found")


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLASLt {what} failed with status {status}")


@functools.cache
def _handle(device: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    with torch.cuda.device(device):
        _check(_lib().cublasLtCreate(ctypes.byref(handle)), "create")
    return handle


@functools.cache
def _workspace(device: int) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=f"cuda:{device}")


def _set(desc: ctypes.c_void_p, attr: int, value: ctypes._SimpleCData) -> None:
    _check(_lib().cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
           f"set attribute {attr}")


def _layout(dtype: int, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
    layout = ctypes.c_void_p()
    _check(_lib().cublasLtMatrixLayoutCreate(ctypes.byref(layout), dtype, ctypes.c_uint64(rows),
                                             ctypes.c_uint64(cols), ctypes.c_int64(ld)), "layout")
    return layout


class Matmul:
    """One shape and kind; `candidates` are cuBLASLt's proposals, `choice` the index that runs."""

    def __init__(self, m: int, n: int, k: int, fp8: bool, bias: bool, device: int = 0) -> None:
        self.m, self.n, self.k, self.fp8, self.bias, self.device = m, n, k, fp8, bias, device
        self._lock = threading.Lock()  # pointer attributes are set on the shared descriptor per call
        lib = _lib()
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _R_32F), "desc")
        _set(self.desc, _DESC_TRANSA, ctypes.c_int32(_OP_T))
        _set(self.desc, _DESC_TRANSB, ctypes.c_int32(_OP_N))
        if fp8:
            # the heuristic refuses outer-vector scaling without scale pointers; real ones are set per call
            self._unit_scales = torch.ones(max(m, n), device=f"cuda:{device}")
            _set(self.desc, _DESC_A_SCALE_POINTER, ctypes.c_void_p(self._unit_scales.data_ptr()))
            _set(self.desc, _DESC_B_SCALE_POINTER, ctypes.c_void_p(self._unit_scales.data_ptr()))
            _set(self.desc, _DESC_A_SCALE_MODE, ctypes.c_int32(_SCALE_OUTER_VEC_32F))
            _set(self.desc, _DESC_B_SCALE_MODE, ctypes.c_int32(_SCALE_OUTER_VEC_32F))
            _set(self.desc, _DESC_FAST_ACCUM, ctypes.c_int8(1))
        if bias:
            _set(self.desc, _DESC_EPILOGUE, ctypes.c_uint32(_EPILOGUE_BIAS))
            _set(self.desc, _DESC_BIAS_DATA_TYPE, ctypes.c_int32(_R_16BF))
        operand = _R_8F_E4M3 if fp8 else _R_16BF
        self.a = _layout(operand, k, n, k)  # w: (n, k) row-major = (k, n) column-major, transposed by op
        self.b = _layout(operand, k, m, k)  # x: (m, k) row-major = (k, m) column-major
        self.d = _layout(_R_16BF, n, m, n)  # y: (m, n) row-major = (n, m) column-major
        self.candidates = self._heuristics()
        if not self.candidates:
            raise RuntimeError(f"cuBLASLt has no algorithm for {self}")
        self.choice = 0
        self.timings: list[float] = []

    def __repr__(self) -> str:
        kind = "fp8 row-scaled" if self.fp8 else "bf16"
        return f"Matmul({self.m}x{self.k}x{self.n} {kind}{' +bias' if self.bias else ''})"

    def _heuristics(self) -> list[_Heuristic]:
        lib = _lib()
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        limit = ctypes.c_uint64(WORKSPACE_BYTES)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit),
                                                        ctypes.sizeof(limit)), "workspace preference")
        results = (_Heuristic * MAX_CANDIDATES)()
        count = ctypes.c_int(0)
        _check(lib.cublasLtMatmulAlgoGetHeuristic(_handle(self.device), self.desc, self.a, self.b, self.d, self.d,
                                                  pref, MAX_CANDIDATES, results, ctypes.byref(count)), "heuristic")
        lib.cublasLtMatmulPreferenceDestroy(pref)
        return [results[i] for i in range(count.value) if results[i].state == 0]

    def __call__(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                 x_scale: torch.Tensor | None = None, w_scale: torch.Tensor | None = None,
                 choice: int | None = None) -> torch.Tensor:
        out = torch.empty(self.m, self.n, dtype=torch.bfloat16, device=x.device)
        one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        algo = self.candidates[self.choice if choice is None else choice].algo
        stream = ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream)
        with self._lock:
            if self.fp8:  # A is w, B is x in cuBLAS's terms
                _set(self.desc, _DESC_A_SCALE_POINTER, ctypes.c_void_p(w_scale.data_ptr()))
                _set(self.desc, _DESC_B_SCALE_POINTER, ctypes.c_void_p(x_scale.data_ptr()))
            if self.bias:
                _set(self.desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
            ws = _workspace(self.device)
            _check(_lib().cublasLtMatmul(
                _handle(self.device), self.desc, ctypes.byref(one), ctypes.c_void_p(w.data_ptr()), self.a,
                ctypes.c_void_p(x.data_ptr()), self.b, ctypes.byref(zero), ctypes.c_void_p(out.data_ptr()), self.d,
                ctypes.c_void_p(out.data_ptr()), self.d, ctypes.byref(algo), ctypes.c_void_p(ws.data_ptr()),
                ctypes.c_size_t(WORKSPACE_BYTES), stream), f"matmul {self}")
        return out

    def tune(self, *args: torch.Tensor | None, reps: int = 10) -> float:
        """Time every candidate on these operands and keep the fastest; returns its milliseconds."""
        self.timings = []
        for i in range(len(self.candidates)):
            try:
                self(*args, choice=i)
            except RuntimeError:
                self.timings.append(float("inf"))
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                self(*args, choice=i)
            end.record()
            end.synchronize()
            self.timings.append(start.elapsed_time(end) / reps)
        self.choice = min(range(len(self.timings)), key=self.timings.__getitem__)
        return self.timings[self.choice]
