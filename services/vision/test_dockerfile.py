"""Static checks of the production image recipe (Docker builds run in the container tier, not here)."""

import re
from pathlib import Path

from services.vision import fetch_models

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "services" / "vision" / "Dockerfile").read_text()


def test_copy_sources_exist_and_stages_resolve(report):
    for line in DOCKERFILE.splitlines():
        m = re.match(r"COPY (?!--from)(.+) \S+$", line)
        if m:
            for src in m.group(1).split():
                if "$" not in src:
                    assert (ROOT / src).exists(), src
    stages = set(re.findall(r"^FROM .* AS (\S+)$", DOCKERFILE, re.M))
    assert {"models-download", "models-local", "models"} <= stages
    assert "FROM models-${MODELS_FROM} AS models" in DOCKERFILE
    report.validated("vision: production Dockerfile (OpenVINO and CUDA variants, model download)",
                     "no Docker engine in this tier; recipe checked statically")


def test_pinned_checksums_are_sha256_and_clip_needs_them(tmp_path, monkeypatch):
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in fetch_models.PINNED.values())
    monkeypatch.delenv("CLIP_IMG_SHA256", raising=False)
    assert fetch_models.main([str(tmp_path / "out")]) == 1  # refuses to download without checksums
    assert not (tmp_path / "out").exists()


def test_local_models_checked_against_supplied_sums(tmp_path):
    for rel in fetch_models.expected():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    assert fetch_models.verify_local(tmp_path) == []
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  clip/vocab.txt\n")
    assert fetch_models.verify_local(tmp_path) == ["clip/vocab.txt: does not match SHA256SUMS"]
