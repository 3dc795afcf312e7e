"""Prometheus file_sd targets for what runs now, so scraping follows configs as they start and stop.

The runtime (local or compose) calls `write_targets()` whenever it publishes the backends file, with
the same data: `{config: [{"url": ..., "admin_url": ...}]}`. Prometheus re-reads the files by itself
(`file_sd_configs` in monitoring/prometheus/prometheus.yml); nobody edits a scrape list by hand.

Three files, one per scrape job:
    gateway.json   the gateway's /metrics (only when the caller says where the gateway is)
    services.json  each service's own /metrics: the admin port (the vLLM supervisor, image, vision)
    vllm.json      vLLM's own /metrics (`vllm:*`) on the data port of each vllm config
Every target carries `config` and `engine` labels; the job comes from the scrape job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.configs import Catalog

Group = dict[str, Any]
FILES = ("gateway.json", "services.json", "vllm.json")


def _field(backend: Any, name: str) -> str | None:
    return backend.get(name) if isinstance(backend, Mapping) else getattr(backend, name, None)


def group(url: str, labels: dict[str, str]) -> Group:
    """One file_sd target group for a base URL: host:port, plus scheme and path prefix when not the default."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    labels = dict(labels)
    if parts.scheme == "https":
        labels["__scheme__"] = "https"
    if parts.path.rstrip("/"):
        labels["__metrics_path__"] = parts.path.rstrip("/") + "/metrics"
    return {"targets": [parts.netloc], "labels": labels}


def targets(running: Mapping[str, Iterable[Any]], catalog: Catalog) -> dict[str, list[Group]]:
    """Target groups per file for the running backends (pure: no I/O)."""
    out: dict[str, list[Group]] = {"services.json": [], "vllm.json": []}
    for name in sorted(running):
        cfg = catalog.configs.get(name)
        engine = cfg.engine.value if cfg else "unknown"
        labels = {"config": name, "engine": engine}
        for backend in running[name]:
            url = (_field(backend, "url") or "").rstrip("/")
            admin = (_field(backend, "admin_url") or url).rstrip("/")
            if not url:
                continue
            if engine != "vllm":
                out["services.json"].append(group(admin, labels))
                continue
            out["vllm.json"].append(group(url, labels))
            if admin != url:  # a supervisor in front of vLLM: lifecycle metrics on its own port
                out["services.json"].append(group(admin, labels))
    return out


def write_targets(running: Mapping[str, Iterable[Any]], catalog: Catalog, out_dir: Path | str,
                  gateway: str | None = None) -> list[Path]:
    """Write the file_sd files atomically; `gateway` ("host:port" or a URL) also writes gateway.json.

    Without `gateway` an existing gateway.json is left alone (the gateway outlives its backends).
    """
    out = Path(out_dir)
    files = targets(running, catalog)
    if gateway:
        files["gateway.json"] = [group(gateway, {})]
    written = []
    for name, groups in files.items():
        written.append(_write(out / name, groups))
    return written


def _write(path: Path, data: list[Group]) -> Path:
    # Prometheus may read at any moment: write beside, then rename over (atomic on one filesystem).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path
