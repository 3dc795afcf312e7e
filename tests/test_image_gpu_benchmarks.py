"""The image service's GPU benchmarks cannot run here (no NVIDIA GPU): check them as far as a CPU allows.

`benchmarks/image_gpu.py --dry` runs the same script end to end with the tiny pipelines on the CPU (baseline,
the service's engine, the table), so a broken benchmark is found before a lent GPU's minutes are spent on it;
the profile and attention probes are loaded (imports resolved). GPU figures: benchmarks/image_gpu_results.md.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = Path(os.environ.get("PLATFORM_VENVS", ROOT / ".venvs")) / "image" / "bin" / "python"
pytestmark = pytest.mark.integration


def run(args: list[str], out: Path) -> subprocess.CompletedProcess:
    if not PY.exists():
        pytest.fail(f"{PY} is missing: run services/setup-env.sh image")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OUT": str(out),
           "IMAGE_COMPILE_CACHE": str(out / "cache")}
    return subprocess.run([str(PY), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_image_gpu_benchmark_dry_run(tmp_path, report):
    r = run(["benchmarks/image_gpu.py", "--dry", "--family", "both", "--steps", "2", "--images", "1"], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for family in ("flux", "ovis"):
        for variant in ("plain diffusers", "service bf16"):
            assert f"| {family} | {variant}" in r.stdout, r.stdout[-3000:]
    assert (tmp_path / "image_gpu.json").exists()
    report.real("image: benchmarks/image_gpu.py --dry (tiny pipelines on the CPU, same script as on the GPU)")


def test_gpu_probes_import(tmp_path, report):
    # Loading each script resolves its imports (services.image.*, torch APIs) without running main().
    code = ("import runpy\n"
            "for p in ('benchmarks/image_gpu_profile.py', 'benchmarks/image_gpu_attention.py',\n"
            "          'benchmarks/image_gpu_rowquant.py', 'benchmarks/image_gpu_gemm.py',\n"
            "          'benchmarks/image_gpu_qknorm.py', 'benchmarks/image_gpu_other.py',\n"
            "          'benchmarks/image_gpu_vae.py', 'benchmarks/image_gpu_clocks.py',\n"
            "          'benchmarks/image_gpu_cudnn_plans.py', 'benchmarks/image_gpu_memsets.py',\n"
            "          'benchmarks/image_gpu_grouped.py'):\n"
            "    runpy.run_path(p, run_name='probe')\n")
    r = run(["-c", code], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report.validated("image: GPU speed path (regional compile, fp8 _scaled_mm, cuDNN fp8 attention, the "
                     "forward and the compiled text encoders as CUDA graphs, fused MLP ends: Triton "
                     "activation+quantisation kernel, cuBLASLt GELU epilogue, the compiled VAE decoder with "
                     "two-stage group norms and float32-score attention matmuls, the initial noise's page-locked "
                     "copy; their GPU tests in services/image/test_engine.py) and benchmarks/image_gpu*.py on "
                     "an H100, with the board measured against the issue's (image_gpu.py --anchor)",
                     "needs an NVIDIA GPU; measured on the lent H100, figures in benchmarks/image_gpu_results.md")
