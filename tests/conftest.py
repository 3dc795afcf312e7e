"""Shared fixtures: a real platform (gateway + services as local processes) per test session.

`platform.ensure("tiny-llm", ...)` starts configs once per session through the same local runtime that
`./start-service.sh --local` uses, in a private run directory and on a free gateway port, and stops
everything at the end. Integration tests ask for the configs they need; nothing is mocked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.configs.catalog import ROOT
from gateway.runtime import local
from gateway.runtime.state import Paths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Dev checkpoints (tiny models) are rebuilt offline when missing; keep them across sessions.
os.environ.setdefault("MODELS_DIR", str(ROOT / ".run" / "models"))


class Platform:
    def __init__(self, run_dir: Path) -> None:
        self.paths = Paths(run_dir)
        self.opts = local.Options(gateway_port=local.free_port(), quiet=True)
        self.started: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.opts.gateway_port}"

    def ensure(self, *names: str) -> str:
        """Start these configs if they are not running yet; return the gateway URL."""
        missing = [n for n in names if n not in self.started]
        if "mt-photos-cpu" in missing:
            self.vision_standins()
        if missing or not self.started:
            print(f"\n[platform] starting {', '.join(missing) or 'gateway'}", file=sys.stderr)
            local.start(missing, self.paths, self.opts)
            self.started.update(missing)
        return self.url

    def vision_standins(self) -> Path:
        """CLIP and face weights cannot be had here: the vision service gets stand-in ONNX files with the
        real names and tensor signatures (services/vision/standins.py), whoever starts it first."""
        from services.vision import testing as vt

        models = vt.build_models(self.paths.run / "vision-standins")
        self.opts.env["VISION_MODELS_DIR"] = str(models)
        return models

    def stop(self, name: str) -> None:
        local.stop([name], self.paths, self.opts)
        self.started.discard(name)
        if not self.started:  # the runtime stops the gateway with the last service
            local.start([], self.paths, self.opts)

    def service(self, name: str) -> dict:
        return local.status(self.paths)["services"][name]

    def shutdown(self) -> None:
        local.stop([], self.paths, self.opts, all_=True)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("run"))
    try:
        yield p
    finally:
        p.shutdown()


@pytest.fixture
def tiny_llm(platform: Platform) -> str:
    """Gateway URL with the tiny vLLM-CPU chat model running behind it."""
    return platform.ensure("tiny-llm")


@pytest.fixture
def all_minilm(platform: Platform) -> str:
    """Gateway URL with the all-MiniLM-L6-v2 embedding model running behind it."""
    return platform.ensure("all-minilm")
