"""The Docker runtime's logic against a fake `docker` CLI (records every call, keeps fake containers).

The real engine runs in tests/test_docker_engine.py; here every decision and error message of
start/stop is checked in well under a second each: the compose command lines per config, the backends
file, unknown config, missing Docker/Compose, too few GPUs, a port in use, an unhealthy container.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import __main__ as cli

FAKE_DOCKER = r'''
import json, os, sys
state_file = os.environ["FAKE_DOCKER_STATE"]
st = json.load(open(state_file))
a = sys.argv[1:]
st["calls"].append(a)
def save():  # atomic: the preload runs two fake docker processes at once
    tmp = f"{state_file}.{os.getpid()}"
    json.dump(st, open(tmp, "w"))
    os.replace(tmp, state_file)
def out(text="", rc=0):
    save(); print(text); sys.exit(rc)
def opt(name):
    return a[a.index(name) + 1] if name in a else None
if a[:1] == ["version"]:
    out("20.10.24", 1 if st.get("daemon_down") else 0)
if a[:1] == ["compose"]:
    a = a[1:]
    if a[:2] == ["version", "--short"]:
        out("", 1) if st.get("no_compose") else out("2.40.3")
    project = opt("-p")
    if "up" in a:
        role = "gateway" if "--wait" in a else "engine"
        labels = "com.modelplat.platform=modelplat,com.modelplat.role=" + role
        if role == "engine":
            labels += ",com.modelplat.config=" + os.environ.get("CONFIG_NAME", "?")
        st["containers"].append({"ID": "cid-" + project, "Names": project + "-1", "State": "running",
                                 "Labels": labels, "project": project})
        out("")
    if "ps" in a:
        out("\n".join(c["ID"] for c in st["containers"] if c["project"] == project))
    if "down" in a:
        st["containers"] = [c for c in st["containers"] if c["project"] != project]
        out("")
    out("")  # run --rm (checkpoint builds) and the rest
if a[:1] == ["ps"]:
    want = [f.split("=", 1)[1] for f in a if f.startswith("label=")]
    rows = [c for c in st["containers"] if all(w in c["Labels"].split(",") or (w.startswith("com.modelplat.role")
            and "=" not in w) for w in want)]
    out("\n".join(json.dumps(c) for c in rows))
if a[:2] == ["image", "inspect"]:
    out("", 0 if st.get("images", True) else 1)
if a[:1] == ["volume"]:
    out("")
if a[:1] == ["inspect"]:
    health = st.get("health", "healthy")
    out(json.dumps([{"State": {"Running": True, "Restarting": False, "ExitCode": 0,
                               "Health": {"Status": health}}, "RestartCount": 0}]))
if a[:1] == ["logs"]:
    out("loading config\nRuntimeError: the model exploded")
if a[:1] == ["exec"]:
    out("200" if "admin/load" in a[-1] else '{"state": "ready"}')
out("unknown fake docker call", 2)
'''

SMI_2 = "0, GPU-0, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 0\n1, GPU-1, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 0\n"


class Fake:
    def __init__(self, tmp: Path) -> None:
        self.state_file = tmp / "fake-docker.json"
        self.write({"calls": [], "containers": []})

    def write(self, data: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(data))

    def update(self, **kw: Any) -> None:
        self.write({**self.read(), **kw})

    def read(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def compose_calls(self, verb: str) -> list[list[str]]:
        return [c[1:] for c in self.read()["calls"] if c[:1] == ["compose"] and verb in c]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    exe = tmp_path / "docker"
    exe.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    exe.chmod(0o755)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SMI_2}EOF\n")
    smi.chmod(0o755)
    f = Fake(tmp_path)
    for k, v in {"DOCKER": str(exe), "FAKE_DOCKER_STATE": str(f.state_file), "NVIDIA_SMI": str(smi),
                 "PLATFORM_STATE_DIR": str(tmp_path / "state"), "MODELS_DIR": str(tmp_path / "models"),
                 "GATEWAY_BIND": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "OLLAMA_PORT": str(free_port()),
                 "MTPHOTOS_PORT": str(free_port()), "PROMETHEUS_PORT": str(free_port()),
                 "GRAFANA_PORT": str(free_port()), "START_TIMEOUT_S": "20"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DOCKER_COMPOSE", raising=False)
    return f


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*argv: str) -> int:
    return cli.main(list(argv))


def test_start_and_stop_one_config(fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run("start", "tiny-llm") == 0
    err = capsys.readouterr().err
    core_up, cfg_up = fake.compose_calls("up")
    assert core_up[:6] == ["-p", "modelplat", "-f", str(Path("compose/docker-compose.yml").resolve()),
                           "--profile", "monitoring"] and "--wait" in core_up
    assert cfg_up[:2] == ["-p", "modelplat-tiny-llm"] and cfg_up[cfg_up.index("--profile") + 1] == "llm"
    assert str(tmp_path / "state" / "compose" / "tiny-llm.yml") in cfg_up
    # The offline tiny checkpoint is built by the service image, in a one-off container.
    build = fake.compose_calls("run")[0]
    assert build[-4:] == ["-m", "services.llm.build", "tiny-llm", "/models/tiny-llm"]
    backends = json.loads((tmp_path / "state" / "backends.json").read_text())
    assert backends == {"tiny-llm": [{"url": "http://tiny-llm:8000", "admin_url": "http://tiny-llm:8001"}]}
    targets = json.loads((tmp_path / "state" / "prometheus" / "targets" / "gateway.json").read_text())
    assert targets[0]["targets"] == ["gateway:8080"]
    assert "model ready" in err and "/v1/chat/completions" in err and "ollama run tiny-llm" in err

    assert run("start", "tiny-llm") == 0  # idempotent: nothing new is started
    assert len(fake.compose_calls("up")) == 2
    assert "already running" in capsys.readouterr().err

    assert run("stop", "tiny-llm") == 0
    assert fake.compose_calls("down")[-1][:2] == ["-p", "modelplat-tiny-llm"]
    assert json.loads((tmp_path / "state" / "backends.json").read_text()) == {}
    assert run("stop", "--all") == 0
    assert fake.compose_calls("down")[-1][:2] == ["-p", "modelplat"]
    assert fake.read()["containers"] == []


def test_unknown_config_lists_known(fake: Fake, capsys: pytest.CaptureFixture[str]):
    assert run("start", "no-such-model") == 1
    err = capsys.readouterr().err
    assert "unknown config 'no-such-model'" in err and "tiny-llm" in err and "mt-photos-cpu" in err
    assert fake.read()["calls"] == []  # nothing was started


def test_missing_docker(fake: Fake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    assert run("start", "tiny-llm") == 1
    assert "Docker is not installed" in capsys.readouterr().err


def test_daemon_down_and_missing_compose(fake: Fake, capsys: pytest.CaptureFixture[str]):
    fake.update(daemon_down=True)
    assert run("start", "tiny-llm") == 1
    assert "cannot reach the Docker engine" in capsys.readouterr().err
    fake.update(daemon_down=False, no_compose=True)
    assert run("start", "tiny-llm") == 1
    assert "Docker Compose v2 is not installed" in capsys.readouterr().err


def test_too_few_gpus(fake: Fake, capsys: pytest.CaptureFixture[str]):
    assert run("start", "llama3-70b_4") == 1
    assert "needs 4 NVIDIA GPU(s) but this host has 2" in capsys.readouterr().err
    assert fake.compose_calls("up") == []  # checked before anything starts


def test_gpu_choice_reaches_compose(fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run("start", "--no-preload", "nemotron-70b_2") == 0
    override = (tmp_path / "state" / "compose" / "nemotron-70b_2.yml").read_text()
    assert "device_ids:\n" in override and "- '0'" in override and "- '1'" in override
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["gpus"] == {"nemotron-70b_2": ["0", "1"]}
    # Both GPUs now belong to nemotron (its model may not be loaded yet): a second config is refused.
    assert run("start", "llama3-8b") == 1
    assert "only 0 are not given to a running config (GPU 0 (nemotron-70b_2)" in capsys.readouterr().err


def test_no_nvidia_driver(fake: Fake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("NVIDIA_SMI", "")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert run("start", "llama3-8b") == 1
    assert "nvidia-smi was not found" in capsys.readouterr().err


def test_port_in_use(fake: Fake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("GATEWAY_PORT", str(port))
        assert run("start", "tiny-llm") == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} (gateway (GATEWAY_PORT))" in err and "in use" in err
    assert fake.compose_calls("up") == []


def test_unhealthy_container_shows_logs_and_is_removed(fake: Fake, capsys: pytest.CaptureFixture[str]):
    fake.update(health="unhealthy")
    assert run("start", "mt-photos-cpu") == 1
    err = capsys.readouterr().err
    assert "mt-photos-cpu: its container failed its health check" in err and "RuntimeError: the model exploded" in err
    assert fake.compose_calls("down")[-1][:2] == ["-p", "modelplat-mt-photos-cpu"]


def test_image_missing_with_pull_never(fake: Fake, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]):
    fake.update(images=False)
    monkeypatch.setenv("PULL_POLICY", "never")
    assert run("start", "tiny-flux") == 1
    err = capsys.readouterr().err
    assert "image modelplat/image-cpu is not on this host" in err and "docker build -f services/image/Dockerfile" in err
