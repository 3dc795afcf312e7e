"""The local runtime: each CPU config as a process on a loopback port, the gateway in front (no Docker).

`start()` prepares the config's Python environment and dev checkpoint, starts the service, waits for
it with a visible progress line, publishes it to the gateway and makes sure the gateway runs.
`stop()` stops processes by process group and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.configs import Config, Engine, load_catalog
from gateway.configs.catalog import ROOT
from gateway.runtime.state import Paths, locked, publish, read_json, write_json

KIND = {Engine.vllm: "llm", Engine.diffusers: "image", Engine.vision: "vision"}


class StartError(Exception):
    """A start or stop that cannot go on; the message says what to do."""


@dataclass
class Options:
    gateway_port: int = int(os.environ.get("GATEWAY_PORT", "8080"))
    gateway_host: str = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    wait_s: float = float(os.environ.get("START_TIMEOUT_S", "900"))
    preload: bool = True  # an operator who starts an LLM expects it ready, not loading on first use
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the services started


def say(opts: Options, msg: str, end: str = "\n") -> None:
    if not opts.quiet:
        print(msg, end=end, file=sys.stderr, flush=True)


_last_progress: dict[str, float] = {}


def progress(opts: Options, key: str, msg: str) -> None:
    """A live line on a terminal; in a log (no TTY), one line every 10 s instead of a flood."""
    if opts.quiet:
        return
    if sys.stderr.isatty():
        print(f"\r{msg}" + " " * 10, end="", file=sys.stderr, flush=True)
    elif time.monotonic() - _last_progress.get(key, 0) >= 10:
        _last_progress[key] = time.monotonic()
        print(msg, file=sys.stderr, flush=True)


def done(opts: Options, msg: str) -> None:
    say(opts, ("\r" if sys.stderr.isatty() else "") + msg + " " * 20)


# ---------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0


def http(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive (it answers kill(0) until reaped).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def venv_python(kind: str) -> Path:
    return Path(os.environ.get("PLATFORM_VENVS", ROOT / ".venvs")) / kind / "bin" / "python"


def ensure_env(kind: str, opts: Options) -> None:
    """Create the engine's Python environment if it is missing (minutes the first time)."""
    say(opts, f"[env] {kind}: checking .venvs/{kind}")
    cmd = [str(ROOT / "services" / "setup-env.sh"), *(["--quiet"] if opts.quiet else []), kind]
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise StartError(f"could not create the '{kind}' environment (see the output above)")


def service_env(paths: Paths, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    tmp = paths.tmp(name)
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **(extra or {}),
        "PYTHONPATH": str(ROOT),
        "MODELS_DIR": str(paths.models),
        "PLATFORM_RUN_DIR": str(paths.run),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TMPDIR": str(tmp),  # vLLM leaves sockets in TMPDIR: one folder per service, removed on stop
        "PYTHONUNBUFFERED": "1",
    }


def ensure_checkpoint(cfg: Config, paths: Paths, opts: Options) -> None:
    """Build an offline dev/test checkpoint (tiny models) the first time it is needed."""
    if not cfg.model.build:
        return
    target = paths.models / cfg.model.checkpoint
    if target.exists():
        return
    kind = KIND[cfg.engine]
    say(opts, f"[model] building {cfg.model.build} into {target} (offline)")
    cmd = [str(venv_python(kind)), "-m", f"services.{kind}.build", cfg.model.build, str(target)]
    r = subprocess.run(cmd, cwd=ROOT, env=service_env(paths, cfg.name), capture_output=True, text=True)
    if r.returncode != 0:
        raise StartError(f"building {cfg.model.build} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        # A new session: the service and its children (vLLM's workers) form one group to signal.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def kill_group(pid: int, grace_s: float = 30) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Members may be zombies waiting for a parent that is gone; count only live ones.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---------------------------------------------------------------- waiting, with progress
def wait_healthy(name: str, url: str, pid: int, log: Path, opts: Options, what: str = "starting") -> None:
    t0 = time.monotonic()
    while True:
        status, _ = http("GET", url, timeout=2)
        if status == 200:
            done(opts, f"[{name}] {what}: up after {time.monotonic() - t0:.0f} s")
            return
        if not alive(pid):
            raise StartError(f"{name} exited while {what}; last log lines ({log}):\n{tail(log)}")
        if time.monotonic() - t0 > opts.wait_s:
            raise StartError(f"{name} not healthy after {opts.wait_s:.0f} s; last log lines:\n{tail(log)}")
        progress(opts, name + what, f"[{name}] {what} ... {time.monotonic() - t0:.0f} s")
        time.sleep(0.5)


def wait_loaded(name: str, admin_url: str, pid: int, log: Path, opts: Options) -> None:
    """Ask the service to load its model and show its lifecycle state until it is ready."""
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=http("POST", admin_url + "/admin/load", timeout=opts.wait_s)))
    t.start()
    t0 = time.monotonic()
    while t.is_alive():
        _, snap = http("GET", admin_url + "/admin/lifecycle", timeout=2)
        state = snap.get("state", "?") if isinstance(snap, dict) else "?"
        progress(opts, name + "load", f"[{name}] model {state} ... {time.monotonic() - t0:.0f} s")
        if not alive(pid):
            raise StartError(f"{name} exited while loading; last log lines ({log}):\n{tail(log)}")
        t.join(1.0)
    status, body = result.get("r", (0, None))
    if status != 200:
        raise StartError(f"{name}: model load failed ({status}): {body}\nlast log lines:\n{tail(log)}")
    done(opts, f"[{name}] model ready after {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------- start / stop
def service_command(cfg: Config, port: int, admin_port: int | None) -> list[str]:
    kind = KIND[cfg.engine]
    cmd = [str(venv_python(kind)), "-m", f"services.{kind}", "--config", cfg.name, "--host", "127.0.0.1",
           "--port", str(port)]
    if admin_port:
        cmd += ["--admin-port", str(admin_port)]
    return cmd


def start_service(cfg: Config, paths: Paths, opts: Options) -> dict[str, Any]:
    if not cfg.is_cpu:
        raise StartError(
            f"{cfg.name} needs {cfg.gpus.count} {cfg.gpus.vendor} GPU(s); --local runs CPU configs only. "
            f"Run it with Docker on a GPU host: ./start-service.sh {cfg.name}"
        )
    kind = KIND[cfg.engine]
    ensure_env(kind, opts)
    ensure_checkpoint(cfg, paths, opts)
    port = free_port()
    admin_port = free_port() if cfg.engine == Engine.vllm else None  # vLLM's supervisor has its own port
    log = paths.log(cfg.name)
    pid = spawn(service_command(cfg, port, admin_port), service_env(paths, cfg.name, opts.env), log)
    url = f"http://127.0.0.1:{port}"
    admin_url = f"http://127.0.0.1:{admin_port or port}"
    try:
        wait_healthy(cfg.name, admin_url + "/healthz", pid, log, opts)
        if opts.preload and cfg.engine == Engine.vllm:
            wait_loaded(cfg.name, admin_url, pid, log, opts)
    except BaseException:
        kill_group(pid, grace_s=10)
        raise
    return {"pid": pid, "kind": kind, "url": url, "admin_url": admin_url, "log": str(log)}


def ensure_gateway(paths: Paths, state: dict[str, Any], opts: Options) -> dict[str, Any]:
    gw = state.get("gateway") or {}
    if alive(gw.get("pid")):
        return gw
    if port_busy(opts.gateway_host, opts.gateway_port):
        raise StartError(
            f"port {opts.gateway_port} is in use by another program; set GATEWAY_PORT to a free port"
        )
    ensure_env("gateway", opts)
    env = {**service_env(paths, "gateway"), "GATEWAY_BACKENDS_FILE": str(paths.backends),
           "GATEWAY_PORT": str(opts.gateway_port)}
    cmd = [str(venv_python("gateway")), "-m", "gateway", "--host", opts.gateway_host, "--port", str(opts.gateway_port)]
    log = paths.log("gateway")
    pid = spawn(cmd, env, log)
    wait_healthy("gateway", f"http://127.0.0.1:{opts.gateway_port}/healthz", pid, log, opts)
    return {"pid": pid, "port": opts.gateway_port, "url": f"http://127.0.0.1:{opts.gateway_port}", "log": str(log)}


def backends_of(state: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    return {n: [{"url": s["url"], "admin_url": s["admin_url"]}] for n, s in state.get("services", {}).items()}


def start(names: list[str], paths: Paths | None = None, opts: Options | None = None) -> dict[str, Any]:
    paths, opts = paths or Paths.default(), opts or Options()
    catalog = load_catalog()
    cfgs = [catalog.require(n) for n in names]
    with locked(paths):
        state = prune(read_json(paths.state, {}))
        for cfg in cfgs:
            if cfg.name in state["services"]:
                say(opts, f"[{cfg.name}] already running (pid {state['services'][cfg.name]['pid']})")
                continue
            state["services"][cfg.name] = start_service(cfg, paths, opts)
            write_json(paths.state, state)
            publish(paths, backends_of(state))
        state["gateway"] = ensure_gateway(paths, state, opts)
        write_json(paths.state, state)
        publish(paths, backends_of(state), gateway=f"127.0.0.1:{opts.gateway_port}")
    return state


def prune(state: dict[str, Any]) -> dict[str, Any]:
    """Forget processes that died on their own (a crash must not block the next start)."""
    services = {n: s for n, s in state.get("services", {}).items() if alive(s.get("pid"))}
    gateway = state.get("gateway") if alive((state.get("gateway") or {}).get("pid")) else None
    return {"services": services, "gateway": gateway}


def stop(names: list[str], paths: Paths | None = None, opts: Options | None = None, all_: bool = False) -> list[str]:
    paths, opts = paths or Paths.default(), opts or Options()
    if not all_:
        catalog = load_catalog()
        for n in names:
            catalog.require(n)  # an unknown name is an error, not a silent no-op
    stopped = []
    with locked(paths):
        state = read_json(paths.state, {"services": {}, "gateway": None})
        targets = list(state.get("services", {})) if all_ else names
        for name in targets:
            svc = state.get("services", {}).pop(name, None)
            if svc is None:
                say(opts, f"[{name}] not running")
                continue
            # Unpublish first so the gateway stops routing before the process goes away.
            publish(paths, backends_of(state))
            kill_group(svc["pid"])
            _cleanup_tmp(paths, name)
            stopped.append(name)
            say(opts, f"[{name}] stopped")
        gw = state.get("gateway")
        if gw and (all_ or not state.get("services")):
            kill_group(gw["pid"], grace_s=10)
            state["gateway"] = None
            stopped.append("gateway")
            say(opts, "[gateway] stopped")
        write_json(paths.state, state)
        publish(paths, backends_of(state))
    return stopped


def _cleanup_tmp(paths: Paths, name: str) -> None:
    shutil.rmtree(paths.tmp(name), ignore_errors=True)


def status(paths: Paths | None = None) -> dict[str, Any]:
    paths = paths or Paths.default()
    return prune(read_json(paths.state, {}))
