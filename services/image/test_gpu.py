from __future__ import annotations

from gateway.configs.schema import GPUs
from services.image import gpu


def test_parse_and_pick() -> None:
    free = gpu.parse_free("0, 1000\n1, 70000\n2, 50000\nbad line\n")
    assert free == [("0", 1000), ("1", 70000), ("2", 50000)]
    assert gpu.most_free(free, 1) == ["1"]
    assert gpu.most_free(free, 2) == ["1", "2"]


def test_select(monkeypatch) -> None:
    assert gpu.select_device(GPUs(), env={}) == "cpu"
    env: dict[str, str] = {}
    assert gpu.select_device(GPUs(vendor="nvidia", count=1, device_ids=["3"]), env=env) == "cuda"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setattr(gpu, "query_free", lambda: [("0", 10), ("1", 20)])
    env = {}
    gpu.select_device(GPUs(vendor="nvidia", count=1), env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    env = {"CUDA_VISIBLE_DEVICES": "0"}  # an orchestrator's choice wins
    gpu.select_device(GPUs(vendor="nvidia", count=1), env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
