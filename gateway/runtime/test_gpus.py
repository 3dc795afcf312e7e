"""GPU checks for the Docker path, on recorded nvidia-smi output (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.configs import load_catalog
from gateway.runtime import gpus

# nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu
#            --format=csv,noheader,nounits   on a 4 x H100 host with GPU 1 half full and GPU 3 busy.
H100X4 = """\
0, GPU-aaaaaaaa-0000, NVIDIA H100 80GB HBM3, 81559, 4, 81555, 0
1, GPU-aaaaaaaa-0001, NVIDIA H100 80GB HBM3, 81559, 40000, 41559, 35
2, GPU-aaaaaaaa-0002, NVIDIA H100 80GB HBM3, 81559, 1024, 80535, 3
3, GPU-aaaaaaaa-0003, NVIDIA H100 80GB HBM3, 81559, 78000, 3559, 99
"""
MIG_NA = "0, GPU-bbbb, NVIDIA A100-SXM4-80GB, 81920, 0, 81920, [N/A]\n"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_parse_fields_and_na():
    g = gpus.parse(H100X4)
    assert [x.index for x in g] == ["0", "1", "2", "3"]
    assert g[1].free_mib == 41559 and g[1].util_pct == 35 and g[1].name == "NVIDIA H100 80GB HBM3"
    assert gpus.parse(MIG_NA)[0].util_pct == -1
    assert gpus.parse("0, GPU-c, Weird, Name, 100, 1, 99, 0\n")[0].name == "Weird, Name"
    with pytest.raises(gpus.GPUError, match="unexpected nvidia-smi output"):
        gpus.parse("garbage line\n")


def test_least_loaded_choice(catalog):
    cfg = catalog.require("llama3-70b_1")  # one GPU, vLLM at 0.9 utilisation: needs ~72 GiB free
    picked = gpus.choose(cfg, gpus.parse(H100X4))
    assert [g.index for g in picked] == ["0"]  # most free memory; 1 and 3 lack room
    assert gpus.cuda_visible_devices(picked) == "0"
    # GPU 0 already belongs to a running config (lazy load: nvidia-smi cannot see it yet) -> GPU 2.
    assert [g.index for g in gpus.choose(cfg, gpus.parse(H100X4), busy={"0": "llama3-8b"})] == ["2"]
    with pytest.raises(gpus.GPUError, match=r"only 1 are not given to a running config \(GPU 0 \(a\), GPU 1"):
        gpus.choose(catalog.require("nemotron-70b_2"), gpus.parse(H100X4), busy={"0": "a", "1": "b", "2": "c"})


def test_too_few_gpus(catalog):
    with pytest.raises(gpus.GPUError, match=r"needs 4 NVIDIA GPU\(s\) but this host has 2"):
        gpus.choose(catalog.require("llama3-70b_4"), gpus.parse(H100X4)[:2])


def test_not_enough_free_memory(catalog):
    with pytest.raises(gpus.GPUError, match=r"needs 4 GPU\(s\) with enough free memory, only 2 have it"):
        gpus.choose(catalog.require("llama3-70b_4"), gpus.parse(H100X4))


def test_pinned_gpus(catalog):
    cfg = catalog.require("llama3-8b").model_copy(update={"gpus": catalog.require("llama3-8b").gpus.model_copy(
        update={"device_ids": ["GPU-aaaaaaaa-0002"]})})
    assert [g.index for g in gpus.choose(cfg, gpus.parse(H100X4))] == ["2"]
    missing = cfg.model_copy(update={"gpus": cfg.gpus.model_copy(update={"device_ids": ["7"]})})
    with pytest.raises(gpus.GPUError, match="pins GPU '7', which this host does not have"):
        gpus.choose(missing, gpus.parse(H100X4))
    full = cfg.model_copy(update={"gpus": cfg.gpus.model_copy(update={"device_ids": ["3"]})})
    with pytest.raises(gpus.GPUError, match="free on pinned GPU 3"):
        gpus.choose(full, gpus.parse(H100X4))


def test_non_vllm_needs_its_weights_only(catalog):
    cfg = catalog.require("mt-photos-cuda")  # a small vision model fits next to a half-full GPU
    assert gpus.need_free_mib(cfg, gpus.parse(H100X4)[1]) < 4 * 1024


def test_query_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("NVIDIA_SMI", raising=False)
    with pytest.raises(gpus.GPUError, match="nvidia-smi was not found"):
        gpus.query()


def test_query_runs_nvidia_smi(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{H100X4}EOF\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NVIDIA_SMI", str(fake))
    assert len(gpus.query()) == 4
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2; exit 9\n")
    with pytest.raises(gpus.GPUError, match="exit 9"):
        gpus.query()


def test_intel_render_nodes(catalog, tmp_path: Path):
    cfg = catalog.require("mt-photos")
    with pytest.raises(gpus.GPUError, match="needs 1 Intel GPU"):
        gpus.check_intel(cfg, tmp_path / "dri")
    (tmp_path / "dri").mkdir()
    (tmp_path / "dri" / "renderD128").touch()
    assert gpus.check_intel(cfg, tmp_path / "dri") == [str(tmp_path / "dri" / "renderD128")]
