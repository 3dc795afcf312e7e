"""Where a runtime keeps its state, and the files it publishes for the gateway and Prometheus.

Everything lives under one run directory (`PLATFORM_RUN_DIR`, default `<repo>/.run`), so tests can run
a whole platform in a temporary folder beside the developer's own:

    state.json         what this runtime started (pids, ports)
    backends.json      what the gateway routes to (GATEWAY_BACKENDS_FILE)
    prometheus/        file_sd targets for Prometheus
    logs/<name>.log    each process's output
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.configs.catalog import ROOT


@dataclass(frozen=True)
class Paths:
    run: Path

    @classmethod
    def default(cls) -> Paths:
        return cls(Path(os.environ.get("PLATFORM_RUN_DIR", ROOT / ".run")).resolve())

    @property
    def state(self) -> Path:
        return self.run / "state.json"

    @property
    def backends(self) -> Path:
        return self.run / "backends.json"

    @property
    def targets(self) -> Path:
        return self.run / "prometheus" / "targets"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def models(self) -> Path:
        return Path(os.environ.get("MODELS_DIR", ROOT / ".run" / "models")).resolve()

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tmp(self, name: str) -> Path:
        # Short on purpose: vLLM puts unix sockets in TMPDIR and a socket path must fit in 107 bytes,
        # which a pytest temp folder easily exceeds. One folder per run directory and service.
        tag = hashlib.sha1(str(self.run).encode()).hexdigest()[:8]
        return Path("/tmp") / f"mp-{tag}" / name


def write_json(path: Path, data: Any) -> None:
    """Write atomically: readers (the gateway polls these files) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """One runtime command at a time per run directory (two start-service.sh at once must not race)."""
    paths.run.mkdir(parents=True, exist_ok=True)
    with open(paths.run / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish(paths: Paths, backends: dict[str, list[dict[str, str]]], gateway: str | None = None) -> None:
    """Tell the gateway (and Prometheus) what runs now; `gateway` is its host:port, for scraping."""
    write_json(paths.backends, backends)
    try:
        from gateway.runtime_targets import write_targets
    except ImportError:  # monitoring not installed in this checkout
        return
    from gateway.configs import load_catalog

    write_targets(backends, load_catalog(), paths.targets, gateway=gateway)
