"""The gateway's added latency and throughput, next to nginx (the floor) and the LiteLLM proxy, same run.

All proxies sit in front of the same fast OpenAI-shaped stub (gateway/testing.py FakeBackend: a chat
completion, or an SSE stream of 32 chunks). Each proxy is pinned to core 0 (taskset); the stub and the
load generators to core 1, so the comparison is per proxy core. Measured per target:

- p50 at 1 connection and p99 at 8 connections (wrk, plain chat completion), as *added* latency: the
  same percentile measured directly against the stub is subtracted;
- max requests per second at 32 connections (wrk);
- a 32-chunk stream at 1 connection: time to first byte and total time (a raw-socket client), added.

    .venvs/gateway/bin/python benchmarks/gateway.py [--seconds 5] [--skip-litellm] [--skip-redis]

Installs what it needs: Debian's nginx and wrk (apt, when root) and LiteLLM's proxy in its own venv
(/tmp/bench-litellm, PyPI). Prints a table with ratios to nginx and writes JSON to $OUT or /tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", "/tmp"))
WORK = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
PROXY_CORE, LOAD_CORE = "0", "1"
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/tmp/bench-litellm"))
LITELLM_SPEC = os.environ.get("LITELLM_SPEC", "litellm[proxy]")
MODEL = "tiny-llm"
PLAIN = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
STREAM = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32,
                     "stream": True})
PATH = "/v1/chat/completions"
KEY = "sk-bench-4f9c2a7e1b3d5f60718293a4b5c6d7e8"  # every proxy checks it (LiteLLM: its master key)


# ---------------------------------------------------------------- tools
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_apt(*packages: str) -> None:
    missing = [p for p, binary in packages_bins(packages) if shutil.which(binary) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"install {' '.join(missing)} (apt) first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


def packages_bins(packages: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(p, "nginx" if p.startswith("nginx") else p) for p in packages]


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    uv = ROOT / ".venvs" / ".tools" / "bin" / "uv"
    print(f"[bench] installing {LITELLM_SPEC} into {LITELLM_VENV} (PyPI)", file=sys.stderr)
    if uv.exists():
        subprocess.run([str(uv), "venv", "-q", "-p", "python3.11", str(LITELLM_VENV)], check=True)
        env = {**os.environ, "VIRTUAL_ENV": str(LITELLM_VENV)}
        subprocess.run([str(uv), "pip", "install", "-q", LITELLM_SPEC], check=True, env=env)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True)
    return exe


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); see {WORK}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout:.0f} s")


@contextlib.contextmanager
def process(cmd: list[str], core: str, name: str, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    log = open(WORK / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["taskset", "-c", core, *cmd], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True, cwd=ROOT)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ---------------------------------------------------------------- servers
# The stub keeps no record of requests: a list of a million request bodies would make the stub's own
# garbage collector pause for 100+ ms and put those pauses into every target's p99.
STUB = """
import asyncio, gc, sys, uvloop
from gateway.testing import FakeBackend
class NoRecord(list):
    def append(self, item): pass
async def main():
    stub = FakeBackend(chunks=32, requests=NoRecord())
    await stub.start(port=int(sys.argv[1]))
    gc.collect(); gc.freeze()
    await asyncio.Event().wait()
uvloop.run(main())
"""


def nginx_conf(port: int, stub: int) -> Path:
    conf = WORK / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; master_process off; pid {WORK}/nginx.pid; error_log {WORK}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {WORK}/nginx-body; proxy_temp_path {WORK}/nginx-proxy;
  fastcgi_temp_path {WORK}/nginx-fcgi; uwsgi_temp_path {WORK}/nginx-uwsgi; scgi_temp_path {WORK}/nginx-scgi;
  upstream stub {{ server 127.0.0.1:{stub}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://stub; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off;
    }}
  }}
}}
""")
    return conf


def litellm_conf(stub: int) -> Path:
    conf = WORK / "litellm.yaml"
    conf.write_text(f"""
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{stub}/v1
      api_key: sk-none
litellm_settings:
  telemetry: false
  drop_params: true
""")
    return conf


# ---------------------------------------------------------------- load generators
def wrk(port: int, conns: int, seconds: float, body: str) -> dict[str, float]:
    lua = WORK / f"body-{abs(hash(body))}.lua"
    lua.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                   f'wrk.headers["Content-Type"] = "application/json"\n'
                   f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
    duration = f"-d{max(1, round(seconds))}s"
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", duration, "--latency", "-s", str(lua),
           f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against port {port}:\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        result[f"p{pct}"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]  # type: ignore[union-attr]
    return result


def stream_times(port: int, n: int) -> dict[str, float]:
    """A raw-socket client (no HTTP library in the way): ms to the first byte and to the stream's end."""
    body = STREAM.encode()
    request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    ttfb, total = [], []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n + 20):
            t0 = time.perf_counter()
            s.sendall(request)
            data = s.recv(65536)
            t1 = time.perf_counter()
            while not data.endswith(b"0\r\n\r\n"):  # the chunked body's terminator
                more = s.recv(65536)
                if not more:
                    raise SystemExit(f"stream cut short on port {port}")
                data += more
            t2 = time.perf_counter()
            if b"[DONE]" not in data:
                raise SystemExit(f"no [DONE] from port {port}: {data[-200:]!r}")
            if i >= 20:  # warm-up
                ttfb.append((t1 - t0) * 1e3)
                total.append((t2 - t0) * 1e3)
    return {"ttfb": statistics.median(ttfb), "total": statistics.median(total)}


def measure(name: str, port: int, seconds: float) -> dict[str, float]:
    print(f"[bench] {name}: warming up", file=sys.stderr)
    wrk(port, 8, 1, PLAIN)
    r1 = wrk(port, 1, seconds, PLAIN)
    r8 = min((wrk(port, 8, seconds, PLAIN) for _ in range(3)), key=lambda r: r["p99"])  # least disturbed of 3
    r32 = wrk(port, 32, seconds, PLAIN)
    st = stream_times(port, 300)
    result = {"p50_1": r1["p50"], "p99_8": r8["p99"], "rps_32": r32["rps"], "ttfb": st["ttfb"], "total": st["total"]}
    print(f"[bench] {name}: {result}", file=sys.stderr)
    return result


# ---------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    py = sys.executable
    stub_port = free_port()
    results: dict[str, dict[str, float]] = {}
    backends = WORK / "backends.json"
    backends.write_text(json.dumps({MODEL: [{"url": f"http://127.0.0.1:{stub_port}"}]}))
    with process([py, "-c", STUB, str(stub_port)], LOAD_CORE, "stub", {"PYTHONPATH": str(ROOT)}) as stub:
        wait_port(stub_port, stub, "stub")
        results["direct (stub)"] = measure("direct", stub_port, args.seconds)
        port = free_port()
        with process(["nginx", "-c", str(nginx_conf(port, stub_port)), "-p", str(WORK)], PROXY_CORE, "nginx") as p:
            wait_port(port, p, "nginx")
            results["nginx"] = measure("nginx", port, args.seconds)
        for name, env in gateway_variants(args):
            port = free_port()
            env = {"GATEWAY_BACKENDS_FILE": str(backends), "PYTHONPATH": str(ROOT), **env}
            cmd = [py, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            with process(cmd, PROXY_CORE, name.split()[0], env) as p:
                wait_port(port, p, name)
                results[name] = measure(name, port, args.seconds)
        if not args.skip_litellm:
            exe = ensure_litellm()
            port = free_port()
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                   "LITELLM_MASTER_KEY": KEY}
            cmd = [str(exe), "--config", str(litellm_conf(stub_port)), "--host", "127.0.0.1", "--port", str(port),
                   "--num_workers", "1"]
            with process(cmd, PROXY_CORE, "litellm", env) as p:
                wait_port(port, p, "litellm", timeout=300)
                time.sleep(2)
                results["LiteLLM proxy"] = measure("litellm", port, args.seconds)
    return results


def gateway_variants(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """The gateway as it ships (open), and with every guard on: keys, rate and stream limits on Redis."""
    variants: list[tuple[str, dict[str, str]]] = [("gateway (open)", {})]
    redis = os.environ.get("BENCH_REDIS_PORT")
    if redis:
        variants.append(("gateway (keys+limits, Redis)", {
            "GATEWAY_API_KEYS": KEY, "GATEWAY_RATE_RPM": "1000000000", "GATEWAY_RATE_TPM": "1000000000000",
            "GATEWAY_MAX_STREAMS_PER_KEY": "1000", "REDIS_URL": f"redis://127.0.0.1:{redis}/0"}))
    return variants


@contextlib.contextmanager
def redis_for(args: argparse.Namespace) -> Iterator[int | None]:
    if args.skip_redis or not shutil.which("redis-server"):
        yield None
        return
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(WORK)]
    with process(cmd, LOAD_CORE, "redis") as p:
        wait_port(port, p, "redis")
        yield port


def table(results: dict[str, dict[str, float]], load: str) -> str:
    """Added = the target's figure minus the stub's own (measured directly, same tools, same run)."""
    base = results["direct (stub)"]
    lite = results.get("LiteLLM proxy")
    lines = [
        "| target | p50 added, 1 conn (ms) | p99 added, 8 conns (ms) | p99, 8 conns (ms) | max rps, 32 conns "
        "| rps vs LiteLLM | stream TTFB added (ms) | 32-chunk stream total added (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if name == "direct (stub)":
            lines.append(f"| stub, direct (absolute) | {r['p50_1']:.3f} | | {r['p99_8']:.3f} | {r['rps_32']:.0f} | "
                         f"| {r['ttfb']:.3f} | {r['total']:.3f} |")
            continue
        ratio = f"{r['rps_32'] / lite['rps_32']:.1f}x" if lite else ""
        lines.append(f"| {name} | {r['p50_1'] - base['p50_1']:.3f} | {r['p99_8'] - base['p99_8']:.3f} | "
                     f"{r['p99_8']:.3f} | {r['rps_32']:.0f} | {ratio} | {r['ttfb'] - base['ttfb']:.3f} | "
                     f"{r['total'] - base['total']:.3f} |")
    lines.append(f"\nLoad average (1, 5, 15 min) before the run: {load}. Proxies on core {PROXY_CORE}; stub, wrk and "
                 f"the stream client on core {LOAD_CORE}. p99: the least disturbed of 3 runs.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5, help="per wrk run")
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument("--skip-redis", action="store_true", help="skip the gateway row with keys, limits and Redis")
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores (one for the proxy, one for the stub and load generator)")
    ensure_apt("nginx-light", "wrk")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with redis_for(args) as redis_port:
        if redis_port:
            os.environ["BENCH_REDIS_PORT"] = str(redis_port)
        results = run(args)
    text = table(results, load)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench-gateway.json").write_text(json.dumps({"load": load, "results": results}, indent=2))
    (OUT / "bench-gateway.md").write_text(text + "\n")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
