"""The Docker runtime: `./start-service.sh NAME...` / `./stop-service.sh NAME | --all` (no --local).

start(): checks Docker and Compose, checks the host has the GPUs each config needs (and picks them),
brings up the platform core (gateway, Redis, Prometheus, Grafana) if it is not running, starts each
config as its own compose project, waits for its health with a progress line, preloads LLMs, and
registers it with the running gateway by rewriting the backends file it reads (no gateway restart).
stop(): unregisters first, then removes only that config's container; --all removes the core too
(the model cache volume stays). Docker itself is the source of truth; state.json only remembers
which GPUs each config was given.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from gateway.configs import Catalog, Config, Engine, load_catalog
from gateway.runtime import compose as cp
from gateway.runtime import gpus
from gateway.runtime.dockercli import Docker, DockerError, label_value
from gateway.runtime.local import Options
from gateway.runtime.state import Paths, locked, read_json, write_json

PLATFORM_LABEL = "com.modelplat.platform"
CONFIG_LABEL = "com.modelplat.config"


def say(opts: Options, msg: str, end: str = "\n") -> None:
    if not opts.quiet:
        print(msg, end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- preflight (nothing started yet)
def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno != errno.EADDRINUSE
    return True


def check_ports(s: cp.Settings) -> None:
    busy = [f"{host}:{port} ({what})" for host, port, what in s.published_ports() if not port_free(host, port)]
    if busy:
        raise DockerError("port(s) in use by another program: " + ", ".join(busy)
                          + ". Stop that program or choose other ports (the variable is named beside each).")


def plan_gpus(cfg: Config, busy: dict[str, str]) -> tuple[list[str] | None, int | None]:
    """(device_ids, render_gid) for this config, or DockerError when the host cannot run it."""
    try:
        if cfg.gpus.vendor == "nvidia":
            picked = gpus.choose(cfg, gpus.query(), busy)
            return [g.index for g in picked], None
        if cfg.gpus.vendor == "intel":
            nodes = gpus.check_intel(cfg)
            return None, os.stat(nodes[0]).st_gid
    except gpus.GPUError as e:
        raise DockerError(str(e)) from None
    return None, None


# ---------------------------------------------------------------- the runtime
class Runtime:
    def __init__(self, opts: Options, settings: cp.Settings | None = None, docker: Docker | None = None) -> None:
        self.opts = opts
        self.s = settings or cp.Settings()
        self.paths = Paths(self.s.state_dir)
        self.docker = docker or Docker.detect()

    # ---- what runs
    def engine_containers(self) -> dict[str, dict[str, str]]:
        rows = self.docker.containers(f"{PLATFORM_LABEL}={self.s.project}", "com.modelplat.role=engine")
        return {label_value(r["labels"], CONFIG_LABEL) or r["name"]: r for r in rows}

    def gateway_container(self) -> dict[str, str] | None:
        rows = self.docker.containers(f"{PLATFORM_LABEL}={self.s.project}", "com.modelplat.role=gateway")
        return rows[0] if rows else None

    def publish(self, running: dict[str, Config]) -> None:
        """Rewrite what the gateway routes to and what Prometheus scrapes (container DNS names)."""
        backends = {name: [cp.backend(cfg)] for name, cfg in sorted(running.items())}
        write_json(self.paths.backends, backends)
        try:
            from gateway.runtime_targets import write_targets
        except ImportError:  # monitoring not in this checkout
            return
        write_targets(backends, load_catalog(self.s.configs_dir), self.paths.targets, gateway="gateway:8080")

    # ---- the core
    def ensure_core(self, state: dict[str, Any]) -> None:
        self.ensure_cache_volume()
        gw = self.gateway_container()
        configs_hash = cp.configs_hash(self.s.configs_dir)
        if gw and gw["state"] == "running":
            if state.get("configs_hash") not in (None, configs_hash):
                # The gateway reads the catalog at start: a new or changed config needs a restart of it.
                say(self.opts, "[core] configs changed since the gateway started: restarting the gateway")
                self.compose_core(["restart", "gateway"])
                self.compose_core(["up", "-d", "--wait", "gateway"])
            state["configs_hash"] = configs_hash
            return
        check_ports(self.s)
        self.paths.targets.mkdir(parents=True, exist_ok=True)
        if not self.paths.backends.exists():
            write_json(self.paths.backends, {})
        what = "gateway, redis" + (", prometheus, grafana" if self.s.monitoring else " (MONITORING=off)")
        say(self.opts, f"[core] starting the platform core ({what}) ...")
        t0 = time.monotonic()
        wait = ["--wait", "--wait-timeout", str(int(self.opts.wait_s))]
        self.compose_core(["up", "-d", *wait], stream=not self.opts.quiet)
        state["configs_hash"] = configs_hash
        say(self.opts, f"[core] healthy after {time.monotonic() - t0:.0f} s; gateway on {self.s.gateway_url}")

    def ensure_cache_volume(self) -> None:
        name = f"{self.s.project}-hf-cache"
        if self.docker.run("volume", "inspect", name, timeout=30).returncode != 0:
            self.docker.run("volume", "create", "--label", f"{PLATFORM_LABEL}={self.s.project}", name,
                            timeout=30, check=True)
            say(self.opts, f"[core] created the model cache volume {name}")

    def compose_core(self, args: list[str], stream: bool = False) -> None:
        r = self.docker.compose([*cp.core_args(self.s), *args], cp.core_env(self.s), stream=stream,
                                timeout=self.opts.wait_s + 60)
        if r.returncode != 0:
            raise DockerError(f"the platform core failed to {args[0]}:\n{_tail(r.stdout + r.stderr)}"
                              + self._core_logs())

    def _core_logs(self) -> str:
        bad = [c for c in self.docker.containers(f"{PLATFORM_LABEL}={self.s.project}", "com.modelplat.role")
               if c["state"] != "running" or "unhealthy" in c.get("status", "")]
        return "".join(f"\nlast log lines of {c['name']}:\n{self.docker.logs(c['id'])}" for c in bad)

    # ---- one config
    def start_config(self, cfg: Config, device_ids: list[str] | None, render_gid: int | None) -> None:
        cp.write_override(self.s, cfg, device_ids, render_gid)
        env, args = cp.config_env(self.s, cfg), cp.config_args(self.s, cfg)
        if cfg.model.build and not (self.s.models_dir / cfg.model.checkpoint).exists():
            self.build_checkpoint(cfg, env, args)
        where = f" on GPU(s) {','.join(device_ids)}" if device_ids else ""
        say(self.opts, f"[{cfg.name}] starting {cfg.image} as {cp.config_project(self.s, cfg)}{where}")
        r = self.docker.compose([*args, "up", "-d", "--no-recreate"], env, timeout=self.opts.wait_s)
        if r.returncode != 0:
            raise DockerError(f"{cfg.name}: docker compose up failed:\n{_tail(r.stdout + r.stderr)}"
                              + _hint(r.stdout + r.stderr))
        cid = self.container_id(cfg)
        try:
            self.wait_healthy(cfg, cid)
            if self.opts.preload and cfg.engine == Engine.vllm:
                self.preload(cfg, cid)
        except BaseException:
            say(self.opts, "")  # end the progress line before the error
            if not _env_flag_keep():
                self.docker.compose([*args, "down", "--timeout", "10"], env, timeout=120)
            raise

    def ensure_image(self, cfg: Config) -> None:
        if self.docker.image_exists(cfg.image):
            return
        build = (f"docker build -f services/{cp.KIND[cfg.engine]}/Dockerfile -t {cfg.image} "
                 "--build-arg BASE_IMAGE=<base> .")
        if self.s.pull_policy == "never":
            raise DockerError(f"{cfg.name}: image {cfg.image} is not on this host and PULL_POLICY=never; "
                              f"build it first: {build}")
        say(self.opts, f"[{cfg.name}] image {cfg.image} is not built yet: compose will build it (many minutes)")

    def build_checkpoint(self, cfg: Config, env: dict[str, str], args: list[str]) -> None:
        """Dev/test checkpoints (tiny models) are built offline by the service image itself."""
        kind = cp.KIND[cfg.engine]
        say(self.opts, f"[{cfg.name}] building the offline checkpoint {cfg.model.build} into "
                       f"{self.s.models_dir / cfg.model.checkpoint}")
        cmd = [*args, "run", "--rm", "--no-deps", "-T", "--entrypoint", "python3", kind,
               "-m", f"services.{kind}.build", cfg.model.build, f"/models/{cfg.model.checkpoint}"]
        r = self.docker.compose(cmd, env, timeout=self.opts.wait_s)
        if r.returncode != 0:
            raise DockerError(f"{cfg.name}: building {cfg.model.build} failed:\n{_tail(r.stdout + r.stderr)}")

    def container_id(self, cfg: Config) -> str:
        r = self.docker.compose([*cp.config_args(self.s, cfg), "ps", "-a", "-q", cp.KIND[cfg.engine]],
                                cp.config_env(self.s, cfg), timeout=60)
        cid = r.stdout.strip().splitlines()
        if r.returncode != 0 or not cid:
            raise DockerError(f"{cfg.name}: its container did not appear: {_tail(r.stdout + r.stderr)}")
        return cid[0]

    def wait_healthy(self, cfg: Config, cid: str) -> None:
        t0 = time.monotonic()
        while True:
            info = self.docker.inspect(cid) or {}
            st = info.get("State", {})
            health = (st.get("Health") or {}).get("Status", "none")
            elapsed = time.monotonic() - t0
            if st.get("Running") and health in ("healthy", "none") and not st.get("Restarting"):
                say(self.opts, f"\r[{cfg.name}] healthy after {elapsed:.0f} s" + " " * 60)
                return
            if not st.get("Running") or st.get("Restarting") or health == "unhealthy" or info.get("RestartCount"):
                if st.get("Restarting") or info.get("RestartCount"):
                    why = f"keeps exiting (restarted {info.get('RestartCount', 0)} time(s))"
                elif not st.get("Running"):
                    why = f"exited (code {st.get('ExitCode')})"
                else:
                    why = "failed its health check"
                raise DockerError(f"{cfg.name}: its container {why}; last log lines:\n{self.docker.logs(cid)}")
            if elapsed > self.opts.wait_s:
                raise DockerError(f"{cfg.name}: not healthy after {elapsed:.0f} s (START_TIMEOUT_S); "
                                  f"last log lines:\n{self.docker.logs(cid)}")
            last = self.docker.logs(cid, 1).splitlines()[-1][:70]
            say(self.opts, f"\r[{cfg.name}] starting ({health}) ... {elapsed:.0f} s | {last}" + " " * 10, end="")
            time.sleep(1.0)

    def preload(self, cfg: Config, cid: str) -> None:
        """Load the model now (downloads included) and show the lifecycle until it is ready."""
        port = cp.admin_port(cfg)
        load = (f"import urllib.request as u; r = u.urlopen(u.Request('http://127.0.0.1:{port}/admin/load', "
                f"data=b'', method='POST'), timeout={self.opts.wait_s:.0f}); print(r.status)")
        t0 = time.monotonic()
        with subprocess.Popen([self.docker.docker, "exec", cid, "python3", "-c", load],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
            while p.poll() is None:
                r = self.docker.exec_python(cid, f"import urllib.request as u; print(u.urlopen("
                                            f"'http://127.0.0.1:{port}/admin/lifecycle', timeout=3).read().decode())")
                state = _json_field(r.stdout, "state") or "?"
                say(self.opts, f"\r[{cfg.name}] model {state} ... {time.monotonic() - t0:.0f} s" + " " * 20, end="")
                if time.monotonic() - t0 > self.opts.wait_s:
                    p.kill()
                    raise DockerError(f"{cfg.name}: model not loaded after {self.opts.wait_s:.0f} s; "
                                      f"last log lines:\n{self.docker.logs(cid)}")
                time.sleep(2.0)
            out, err = p.communicate()
        if p.returncode != 0:
            raise DockerError(f"{cfg.name}: model load failed: {_tail(err or out, 5)}\n"
                              f"last log lines:\n{self.docker.logs(cid)}")
        say(self.opts, f"\r[{cfg.name}] model ready after {time.monotonic() - t0:.0f} s" + " " * 20)

    def stop_config(self, name: str) -> None:
        project = f"{self.s.project}-{cp.alias(name)}"
        r = self.docker.compose(["-p", project, "down", "--remove-orphans", "--timeout", "30"], {}, timeout=180)
        if r.returncode != 0:
            raise DockerError(f"{name}: docker compose down failed:\n{_tail(r.stdout + r.stderr)}")
        (self.s.state_dir / "compose" / f"{name}.yml").unlink(missing_ok=True)


# ---------------------------------------------------------------- entry points (gateway.runtime.__main__)
def start(names: list[str], paths: Paths | None = None, opts: Options | None = None) -> dict[str, Any]:
    opts = opts or Options()
    catalog = load_catalog()
    cfgs = [catalog.require(n) for n in names]
    rt = Runtime(opts)
    with locked(rt.paths):
        state = read_json(rt.paths.state, {})
        running = rt.engine_containers()
        gpu_owner = {i: n for n, info in state.get("gpus", {}).items() if n in running for i in info}
        plans = {}
        for cfg in cfgs:  # every check first: a config that cannot run here fails before anything starts
            if cfg.name not in running:
                rt.ensure_image(cfg)
                plans[cfg.name] = plan_gpus(cfg, gpu_owner)
                gpu_owner.update(dict.fromkeys(plans[cfg.name][0] or [], cfg.name))
        rt.ensure_core(state)
        write_json(rt.paths.state, state)
        for cfg in cfgs:
            if cfg.name in running and running[cfg.name]["state"] == "running":
                say(opts, f"[{cfg.name}] already running ({running[cfg.name]['name']})")
                continue
            device_ids, gid = plans.get(cfg.name) or plan_gpus(cfg, gpu_owner)
            rt.start_config(cfg, device_ids, gid)
            state.setdefault("gpus", {})[cfg.name] = device_ids or []
            write_json(rt.paths.state, state)
            rt.publish(live_configs(rt, catalog))
            say(opts, f"[{cfg.name}] registered with the gateway as {cp.backend(cfg)['url']}")
        rt.publish(live_configs(rt, catalog))
    print_how_to_call(cfgs, rt.s)
    return status_of(rt, catalog)


def live_configs(rt: Runtime, catalog: Catalog) -> dict[str, Config]:
    return {n: catalog.configs[n] for n, c in rt.engine_containers().items()
            if n in catalog.configs and c["state"] == "running"}


def stop(names: list[str], paths: Paths | None = None, opts: Options | None = None,
         all_: bool = False) -> list[str]:
    opts = opts or Options()
    catalog = load_catalog()
    if not all_:
        for n in names:
            catalog.require(n)  # an unknown name is an error, not a silent no-op
    rt = Runtime(opts)
    stopped: list[str] = []
    with locked(rt.paths):
        state = read_json(rt.paths.state, {})
        running = rt.engine_containers()
        targets = sorted(running) if all_ else names
        for name in targets:
            if name not in running:
                say(opts, f"[{name}] not running")
                continue
            # Unregister first so the gateway stops routing to it before the container goes away.
            rt.publish({n: catalog.configs[n] for n in running if n != name and n not in stopped
                        and n in catalog.configs})
            rt.stop_config(name)
            state.get("gpus", {}).pop(name, None)
            stopped.append(name)
            say(opts, f"[{name}] stopped and removed")
        if all_:
            stopped += stop_core(rt, opts)
            state = {}
        write_json(rt.paths.state, state)
        rt.publish(live_configs(rt, catalog) if not all_ else {})
    return stopped


def stop_core(rt: Runtime, opts: Options) -> list[str]:
    if not rt.docker.containers(f"{PLATFORM_LABEL}={rt.s.project}"):
        say(opts, "[core] not running")
        return []
    r = rt.docker.compose([*cp.core_args(rt.s, all_profiles=True), "down", "--remove-orphans", "--timeout", "20"],
                          cp.core_env(rt.s), timeout=300)
    if r.returncode != 0:
        raise DockerError(f"stopping the platform core failed:\n{_tail(r.stdout + r.stderr)}")
    say(opts, f"[core] stopped (the model cache volume {rt.s.project}-hf-cache is kept; "
              f"`docker volume rm {rt.s.project}-hf-cache` deletes it)")
    return ["core"]


def status(paths: Paths | None = None) -> dict[str, Any]:
    rt = Runtime(Options(quiet=True))
    return status_of(rt, load_catalog())


def status_of(rt: Runtime, catalog: Catalog) -> dict[str, Any]:
    gw = rt.gateway_container()
    services = {}
    for name, c in rt.engine_containers().items():
        cfg = catalog.configs.get(name)
        services[name] = {"container": c["name"], "state": c["state"],
                          **(cp.backend(cfg) if cfg else {}), "image": cfg.image if cfg else None}
    gateway = {"url": rt.s.gateway_url, "container": gw["name"], "state": gw["state"]} if gw else None
    return {"runtime": "docker", "gateway": gateway, "services": services}


# ---------------------------------------------------------------- messages
def print_how_to_call(cfgs: list[Config], s: cp.Settings) -> None:
    url = s.gateway_url
    for cfg in cfgs:
        model = cfg.model.served_name
        caps = {c.value for c in cfg.model.capabilities}
        print(f"\n{cfg.name} is up behind {url} (model {model!r}):", file=sys.stderr)
        protos = {p.value for p in cfg.protocols}
        if "image" in caps:
            print(f"  curl {url}/v1/images/generations -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{model}\", \"prompt\": \"a red fox\", \"size\": \"256x256\"}}'", file=sys.stderr)
        elif "embedding" in caps:
            print(f"  curl {url}/v1/embeddings -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{model}\", \"input\": \"hello\"}}'", file=sys.stderr)
        elif "openai" in protos:
            print(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}'",
                  file=sys.stderr)
        if "ollama" in protos:
            print(f"  OLLAMA_HOST={url} ollama run {model} 'Hi'     (or curl {url}/api/tags)", file=sys.stderr)
        if "mtphotos" in protos:
            print(f"  MT Photos: set the AI service URL to http://<this host>:{s.mtphotos_port} "
                  f"(api-key mt_photos_ai_extra); curl -X POST {url}/check -H 'api-key: mt_photos_ai_extra'",
                  file=sys.stderr)
    print(f"  Stop it: ./stop-service.sh {' '.join(c.name for c in cfgs)}    everything: ./stop-service.sh --all",
          file=sys.stderr)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _hint(text: str) -> str:
    if 'could not select device driver "nvidia"' in text:
        return ("\nhint: Docker cannot reach NVIDIA GPUs: install the NVIDIA Container Toolkit "
                "(nvidia-container-toolkit) and restart dockerd.")
    if "address already in use" in text or "port is already allocated" in text:
        return "\nhint: a published port is taken; set GATEWAY_PORT / OLLAMA_PORT / MTPHOTOS_PORT."
    return ""


def _json_field(text: str, key: str) -> str | None:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def _env_flag_keep() -> bool:
    return os.environ.get("KEEP_FAILED", "") not in ("", "0")
