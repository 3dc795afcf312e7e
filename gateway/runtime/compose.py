"""How a config becomes a compose project: names, variables, the per-config file, the command lines.

Pure functions (no Docker needed), shared by the Docker runtime and the static compose tests:

    core:    docker compose -p <platform> -f compose/docker-compose.yml [--profile monitoring] ...
    config:  docker compose -p <platform>-<alias> -f compose/engines.yml -f <state>/compose/<name>.yml
             --profile <kind> ...   (variables from config_env())

Each config is its own compose project on the platform's network, so starting or stopping one never
touches another; the gateway reaches it at http://<alias>:<port> (backends.json).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.configs import Config, Engine
from gateway.configs.catalog import ROOT, configs_dir

COMPOSE_DIR = ROOT / "compose"
CORE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENGINES_FILE = COMPOSE_DIR / "engines.yml"
KIND = {Engine.vllm: "llm", Engine.diffusers: "image", Engine.vision: "vision"}
MONITORING = "monitoring"


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "off", "false", "no", "")


@dataclass(frozen=True)
class Settings:
    """What the operator can change through the environment (documented in the README section)."""

    project: str = field(default_factory=lambda: os.environ.get("PLATFORM_PROJECT", "modelplat"))
    state_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("PLATFORM_STATE_DIR", ROOT / ".run" / "docker")).resolve())
    models_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("MODELS_DIR", ROOT / ".run" / "models")).resolve())
    configs_dir: Path = field(default_factory=lambda: configs_dir().resolve())
    gateway_bind: str = field(default_factory=lambda: os.environ.get("GATEWAY_BIND", "0.0.0.0"))
    gateway_port: int = field(default_factory=lambda: int(os.environ.get("GATEWAY_PORT", "8080")))
    ollama_port: int = field(default_factory=lambda: int(os.environ.get("OLLAMA_PORT", "11434")))
    mtphotos_port: int = field(default_factory=lambda: int(os.environ.get("MTPHOTOS_PORT", "8060")))
    monitoring: bool = field(default_factory=lambda: _env_flag("MONITORING", "on"))
    monitoring_bind: str = field(default_factory=lambda: os.environ.get("MONITORING_BIND", "127.0.0.1"))
    prometheus_port: int = field(default_factory=lambda: int(os.environ.get("PROMETHEUS_PORT", "9090")))
    grafana_port: int = field(default_factory=lambda: int(os.environ.get("GRAFANA_PORT", "3000")))
    pull_policy: str = field(default_factory=lambda: os.environ.get("PULL_POLICY", "missing"))

    @property
    def gateway_url(self) -> str:
        host = "127.0.0.1" if self.gateway_bind in ("0.0.0.0", "::") else self.gateway_bind
        return f"http://{host}:{self.gateway_port}"

    def published_ports(self) -> list[tuple[str, int, str]]:
        """(bind address, host port, what) for every port the core publishes."""
        ports = [(self.gateway_bind, self.gateway_port, "gateway (GATEWAY_PORT)"),
                 (self.gateway_bind, self.ollama_port, "gateway, Ollama port (OLLAMA_PORT)"),
                 (self.gateway_bind, self.mtphotos_port, "gateway, MT Photos port (MTPHOTOS_PORT)")]
        if self.monitoring:
            ports += [(self.monitoring_bind, self.prometheus_port, "Prometheus (PROMETHEUS_PORT)"),
                      (self.monitoring_bind, self.grafana_port, "Grafana (GRAFANA_PORT)")]
        return ports


# ---------------------------------------------------------------- names
def alias(name: str) -> str:
    """A DNS label for the config (dots and underscores are not safe in host names)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def config_project(s: Settings, cfg: Config) -> str:
    return f"{s.project}-{alias(cfg.name)}"


def override_path(s: Settings, cfg: Config) -> Path:
    return s.state_dir / "compose" / f"{cfg.name}.yml"


def admin_port(cfg: Config) -> int:
    # The vLLM supervisor serves /admin/* and /healthz beside vLLM (services/llm: --port + 1).
    return cfg.port + 1 if cfg.engine == Engine.vllm else cfg.port


def backend(cfg: Config) -> dict[str, str]:
    host = alias(cfg.name)
    return {"url": f"http://{host}:{cfg.port}", "admin_url": f"http://{host}:{admin_port(cfg)}"}


# ---------------------------------------------------------------- variables and files
def common_env(s: Settings) -> dict[str, str]:
    return {
        "PLATFORM_PROJECT": s.project,
        "PLATFORM_STATE_DIR": str(s.state_dir),
        "PLATFORM_CONFIGS_DIR": str(s.configs_dir),
        "MODELS_DIR": str(s.models_dir),
        "PULL_POLICY": s.pull_policy,
    }


def core_env(s: Settings) -> dict[str, str]:
    return {
        **common_env(s),
        "GATEWAY_BIND": s.gateway_bind,
        "GATEWAY_PORT": str(s.gateway_port),
        "OLLAMA_PORT": str(s.ollama_port),
        "MTPHOTOS_PORT": str(s.mtphotos_port),
        "MONITORING_BIND": s.monitoring_bind,
        "PROMETHEUS_PORT": str(s.prometheus_port),
        "GRAFANA_PORT": str(s.grafana_port),
    }


def core_args(s: Settings, all_profiles: bool = False) -> list[str]:
    profiles = ["--profile", "*"] if all_profiles else (["--profile", MONITORING] if s.monitoring else [])
    return ["-p", s.project, "-f", str(CORE_FILE), *profiles]


def config_env(s: Settings, cfg: Config) -> dict[str, str]:
    env = {
        **common_env(s),
        "CONFIG_NAME": cfg.name,
        "SERVICE_ALIAS": alias(cfg.name),
        "SERVICE_IMAGE": cfg.image,
        "SERVICE_PORT": str(cfg.port),
        "ADMIN_PORT": str(admin_port(cfg)),
        "HEALTH_PORT": str(admin_port(cfg)),
        "HEALTH_PATH": "/healthz",  # every service's admin API (services/common/admin.py)
    }
    if cfg.container.shm_size:
        env["SHM_SIZE"] = cfg.container.shm_size
    return env


def config_args(s: Settings, cfg: Config) -> list[str]:
    return ["-p", config_project(s, cfg), "-f", str(ENGINES_FILE), "-f", str(override_path(s, cfg)),
            "--profile", KIND[cfg.engine]]


def override(cfg: Config, device_ids: list[str] | None = None, render_gid: int | None = None) -> dict[str, Any]:
    """The per-config compose file: what cannot be a variable in compose/engines.yml.

    NVIDIA: a GPU reservation of exactly the chosen GPUs (device_ids), or of `count` GPUs when no
    choice was made (static rendering without nvidia-smi). Intel: /dev/dri and its group.
    """
    svc: dict[str, Any] = {}
    if cfg.gpus.vendor == "nvidia":
        dev: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        ids = device_ids or cfg.gpus.device_ids
        if ids:
            dev["device_ids"] = list(ids)
        else:
            dev["count"] = cfg.gpus.count
        svc["deploy"] = {"resources": {"reservations": {"devices": [dev]}}}
    elif cfg.gpus.vendor == "intel":
        svc["devices"] = ["/dev/dri:/dev/dri"]
        if render_gid is not None:  # non-root images need the host's render group for /dev/dri
            svc["group_add"] = [str(render_gid)]
    if cfg.container.env:
        svc["environment"] = dict(cfg.container.env)
    return {"services": {KIND[cfg.engine]: svc}}


def write_override(s: Settings, cfg: Config, device_ids: list[str] | None = None,
                   render_gid: int | None = None) -> Path:
    path = override_path(s, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# Written by start-service.sh for config {cfg.name}; do not edit (rewritten on every start).\n"
    path.write_text(head + yaml.safe_dump(override(cfg, device_ids, render_gid), sort_keys=False))
    return path


def configs_hash(directory: Path) -> str:
    """Changes when any config file changes: the gateway loads the catalog once, at its start."""
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.yaml")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
