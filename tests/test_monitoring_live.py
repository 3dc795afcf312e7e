"""Prometheus against the running test stack: every dashboard query returns data.

Starts Debian's `prometheus` on a free loopback port with monitoring/prometheus/prometheus.yml (rendered
beside the runtime's file_sd targets, scraping every 2 s), drives traffic through OpenAI, Ollama and
MT Photos (and image generation when that service runs), then runs every dashboard query and every
recording rule. A query may be empty only for a listed reason (no GPU here, a stack part that is not
running, a failure that this traffic does not provoke); those are reported as "validated, not run".
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.configs import load_catalog
from gateway.runtime import local
from gateway.runtime_targets import write_targets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "monitoring" / "prometheus"
DASHBOARDS = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
SCRAPE_S = 2
LIVE_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "15s"}
# Parts of the stack beyond the LLM: config -> the part its absence leaves empty.
OPTIONAL = {"mt-photos-cpu": "vision", "tiny-flux": "image"}
# Series that this traffic cannot produce, whatever runs: pattern in the query -> why.
NEVER_HERE = {
    "modelplat_gpu_memory": "needs an NVIDIA GPU with NVML (this machine has none)",
    "upstream_errors_total": "needs a failing backend (covered by gateway/test_metrics.py)",
    "rate_limited_total": "needs a rate limit to trigger (covered by gateway/test_metrics.py)",
    "inference_errors_total": "needs a failing inference (a service's own tests provoke those)",
    "num_preemptions_total": "needs a full KV cache",
}
NEEDS_PART = {  # pattern -> stack part
    'engine="diffusers"': "image", "/v1/images": "image",
    'engine="vision"': "vision", 'protocol="mtphotos"': "vision",
    "modelplat_queue_capacity": "image",  # only services with an admission queue publish a capacity
}


# ---------------------------------------------------------------- the stack and Prometheus
@pytest.fixture(scope="module")
def stack(platform) -> tuple[str, dict[str, str]]:
    url = platform.ensure("tiny-llm")
    missing: dict[str, str] = {}
    for name, part in OPTIONAL.items():
        try:
            platform.ensure(name)
        except Exception as e:  # a part that cannot start here leaves its panels listed, not failed
            missing[part] = f"{name} did not start: {str(e).splitlines()[0][:200]}"
    # The runtime publishes the services' targets; the gateway's address is ours to add.
    backends = json.loads(platform.paths.backends.read_text())
    write_targets(backends, load_catalog(), platform.paths.targets, gateway=url)
    return url, missing


def render_config(run: Path) -> Path:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s",
                         evaluation_interval=f"{SCRAPE_S}s")
    cfg["rule_files"] = [str(PROM / "rules" / "*.yml")]
    path = run / "prometheus" / "prometheus.yml"  # file_sd paths are relative to it: run/prometheus/targets
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def prometheus(stack, platform, tmp_path_factory) -> Iterator[str]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (listed in tests/apt-packages.txt)")
    port = local.free_port()
    data = tmp_path_factory.mktemp("prometheus-data")
    log = open(platform.paths.run / "prometheus.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, f"--config.file={render_config(platform.paths.run)}",
                             f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/-/ready").status_code == 200, 60, "prometheus ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


# ---------------------------------------------------------------- traffic
def png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(img).text((8, 16), "modelplat 42", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def drive(gw: str, missing: dict[str, str]) -> dict[str, int]:
    """One round through every protocol; returns status per request for the log."""
    out: dict[str, int] = {}
    with httpx.Client(base_url=gw, timeout=300) as c:
        msg = [{"role": "user", "content": "hello"}]
        out["openai chat"] = c.post("/v1/chat/completions", json={"model": "tiny-llm", "messages": msg,
                                                                    "max_tokens": 8}).status_code
        with c.stream("POST", "/v1/chat/completions", json={
                "model": "tiny", "messages": msg, "max_tokens": 8, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            r.read()
            out["openai chat stream"] = r.status_code
        out["openai completion"] = c.post("/v1/completions", json={"model": "tiny-llm", "prompt": "a b c",
                                                                   "max_tokens": 8}).status_code
        out["openai unknown model"] = c.post("/v1/completions", json={"model": "no-such", "prompt": "x"}).status_code
        out["openai stopped model"] = c.post("/v1/completions", json={"model": "Llama3-8B", "prompt": "x"}).status_code
        out["ollama generate"] = c.post("/api/generate", json={"model": "tiny-llm", "prompt": "hi", "stream": False,
                                                               "options": {"num_predict": 8}}).status_code
        with c.stream("POST", "/api/chat", json={"model": "tiny-llm", "messages": msg,
                                                  "options": {"num_predict": 8}}) as r:
            r.read()
            out["ollama chat stream"] = r.status_code
        out["ollama tags"] = c.get("/api/tags").status_code
        key = {"api-key": "mt_photos_ai_extra"}
        out["mtphotos check"] = c.post("/check", headers=key).status_code
        out["mtphotos ocr"] = c.post("/ocr", headers=key, files={"file": ("t.png", png(), "image/png")}).status_code
        out["mtphotos clip txt"] = c.post("/clip/txt", headers=key, json={"text": "a cat"}).status_code
        if "image" not in missing:
            out["images"] = c.post("/v1/images/generations", json={"model": "tiny-flux", "prompt": "a red square",
                                                                   "size": "256x256", "n": 1}).status_code
    return out


@pytest.fixture(scope="module")
def traffic(stack, prometheus) -> dict[str, int]:
    gw, missing = stack
    wait_for(lambda: has_data(query(prometheus, 'up{job="gateway"} == 1')), 60, "the gateway scraped")
    first = drive(gw, missing)  # creates the series
    time.sleep(3 * SCRAPE_S)
    second = drive(gw, missing)  # moves them, so that rates and quantiles have something to show
    assert second["openai chat"] == 200 and second["openai chat stream"] == 200, second
    assert second["ollama generate"] == 200, second
    if "vision" not in missing:
        assert second["mtphotos ocr"] == 200, second
    time.sleep(3 * SCRAPE_S)
    print(f"\ntraffic round 1: {first}\ntraffic round 2: {second}")
    return second


# ---------------------------------------------------------------- the assertions
def substitute(expr: str, names: list[str]) -> str:
    for k, v in LIVE_VARS.items():
        expr = expr.replace(k, v)
    for n in names:
        expr = expr.replace("${" + n + "}", ".*").replace("$" + n, ".*")
    return expr


def why_empty(expr: str, missing: dict[str, str]) -> str | None:
    for pattern, reason in NEVER_HERE.items():
        if pattern in expr:
            return reason
    for pattern, part in NEEDS_PART.items():
        if pattern in expr and part in missing:
            return missing[part]
    return None


def test_every_target_is_up(stack, prometheus, traffic, report):
    _, missing = stack
    wait_for(lambda: len(query(prometheus, "up")) >= 3, 60, "targets discovered")
    up = {(s["metric"]["job"], s["metric"].get("config", "")): s["value"][1] for s in query(prometheus, "up")}
    assert up[("gateway", "")] == "1" and up[("vllm", "tiny-llm")] == "1" and up[("service", "tiny-llm")] == "1", up
    for name, part in OPTIONAL.items():
        if part not in missing:
            assert up[("service", name)] == "1", up
    report.real("Prometheus discovers gateway, vLLM, its supervisor" +
                "".join(f", {p}" for p in OPTIONAL.values() if p not in missing) + " through file_sd")


def test_every_dashboard_query_returns_data(stack, prometheus, traffic, report):
    _, missing = stack
    empty, excused = [], {}
    total = 0
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        names = [v["name"] for v in dash["templating"]["list"]]
        panels = [p for p in dash["panels"] if p.get("targets")]
        for p in panels:
            for t in p["targets"]:
                total += 1
                expr = substitute(t["expr"], names)
                if has_data(query(prometheus, expr)):
                    continue
                reason = why_empty(expr, missing)
                where = f"{dash['title']} / {p['title']}"
                if reason:
                    excused[where] = reason
                else:
                    empty.append(f"{where}: {expr}")
    for where, reason in excused.items():
        report.validated(f"dashboard panel {where}", reason)
    report.real(f"{total - len(excused) - len(empty)} of {total} dashboard queries return data from the live stack")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_rules_evaluate_and_record(stack, prometheus, traffic, report):
    groups = httpx.get(prometheus + "/api/v1/rules").json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
    assert rules and not broken, broken
    for name in ("protocol_model:modelplat_gateway_requests:rate5m",
                 "protocol_model:modelplat_gateway_error_ratio:rate5m",
                 "protocol_model:modelplat_gateway_request_duration_seconds:p95_5m",
                 "config_model:vllm_time_to_first_token_seconds:p95_5m", "config:modelplat_target_up:min"):
        assert has_data(query(prometheus, name)), name
    protocols = {s["metric"]["protocol"] for s in query(prometheus, "protocol_model:modelplat_gateway_requests:rate5m")}
    _, missing = stack
    assert protocols >= ({"openai", "ollama"} | (set() if "vision" in missing else {"mtphotos"})), protocols
    firing = [a["labels"]["alertname"] for a in httpx.get(prometheus + "/api/v1/alerts").json()["data"]["alerts"]
              if a["state"] == "firing"]
    assert not firing, firing  # a healthy stack raises no alert
    report.real(f"{len(rules)} recording and alert rules evaluate on live data without errors")


def test_metric_labels_stay_bounded(stack, prometheus, traffic):
    series = query(prometheus, "modelplat_gateway_requests_total")
    catalog = load_catalog()
    served = {c.model.served_name for c in catalog} | {"unknown"}
    for s in series:
        m = s["metric"]
        assert m["model"] in served and (m["config"] in catalog.configs or m["config"] == "unknown"), m
        assert re.fullmatch(r"[1-5]\d\d", m["status"]) and m["protocol"] in {"openai", "ollama", "mtphotos", "other"}
        assert "no-such" not in json.dumps(m)
