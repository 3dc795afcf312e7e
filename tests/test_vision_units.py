"""The vision unit tests beside the code need OpenVINO / ONNX Runtime / OpenCV, which live in the
vision env (.venvs/vision), not the gateway env that runs pytest: run them there, for real."""

from __future__ import annotations

import os
import subprocess

import pytest

from services.vision.testing import ROOT, vision_python

pytestmark = pytest.mark.integration


def test_vision_unit_tests_in_the_vision_env(report):
    py = vision_python()
    if not py.exists():
        pytest.fail(f"{py} is missing: run services/setup-env.sh vision")
    r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "services/vision"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
    report.real("vision: unit tests (pipelines vs insightface FaceAnalysis, decoding, tokenizer) in .venvs/vision")
