"""Upstream timeouts come from the environment per engine kind, read when an Upstream is created."""

from gateway.configs import Engine
from gateway.upstream import TIMEOUTS, Timeouts, Upstream, timeouts_for


def test_timeouts_per_engine_from_env(monkeypatch):
    monkeypatch.setenv("UPSTREAM_CONNECT_TIMEOUT_S", "3")
    monkeypatch.setenv("UPSTREAM_CONNECT_TIMEOUT_VISION_S", "1")
    monkeypatch.setenv("UPSTREAM_READ_TIMEOUT_VLLM_S", "42")
    Upstream()
    assert timeouts_for(Engine.vllm) == Timeouts(3, 42)
    assert timeouts_for(Engine.vision) == Timeouts(1, 120)
    assert timeouts_for(Engine.diffusers) == Timeouts(3, 900)
    for name in ("UPSTREAM_CONNECT_TIMEOUT_S", "UPSTREAM_CONNECT_TIMEOUT_VISION_S", "UPSTREAM_READ_TIMEOUT_VLLM_S"):
        monkeypatch.delenv(name)
    Upstream()
    assert TIMEOUTS[Engine.vllm] == Timeouts(5, 600)
