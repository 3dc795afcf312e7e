"""The real Docker tier: the project's images on a private dockerd, driven by the real scripts.

Starts its own dockerd (tests/docker_tier.py: private socket and data root, --iptables=false
--ip-forward=false --bridge=none), builds every image on a debootstrapped local base (upstream bases
are replaced by local stand-ins, listed in the output), runs `./start-service.sh tiny-llm
mt-photos-cpu tiny-flux`, calls every protocol through the published gateway port, stops one config
and then everything with `./stop-service.sh`, checks that nothing is left, and stops its dockerd.
GPU and Intel configs cannot run here: the static tier (test_compose_static.py) covers them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.configs.catalog import ROOT
from tests import docker_tier as dt

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3000)]
ALL_CONFIGS = ["tiny-llm", "mt-photos-cpu", "tiny-flux"]
# DOCKER_TIER_CONFIGS narrows the run while developing (e.g. "tiny-llm"); CI runs all three.
CONFIGS = [c for c in os.environ.get("DOCKER_TIER_CONFIGS", " ".join(ALL_CONFIGS)).split() if c in ALL_CONFIGS]
IMAGE_OF = {"tiny-llm": "modelplat/llm-cpu", "mt-photos-cpu": "modelplat/vision-cpu",
            "tiny-flux": "modelplat/image-cpu"}
KEY = {"api-key": "mt_photos_ai_extra"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, engine: dt.Engine, tmp: Path) -> None:
        self.engine = engine
        self.ports = {k: free_port() for k in ("GATEWAY_PORT", "OLLAMA_PORT", "MTPHOTOS_PORT")}
        self.env = {
            **os.environ, **engine.env, **{k: str(v) for k, v in self.ports.items()},
            "GATEWAY_BIND": "127.0.0.1",
            "PULL_POLICY": "never",          # nothing may be pulled: there is no registry
            "MONITORING": "off",             # no Prometheus/Grafana images here (static tier covers them)
            "REDIS_IMAGE": dt.REDIS_STANDIN,
            "PLATFORM_STATE_DIR": str(tmp / "state"),
            "MODELS_DIR": str(tmp / "models"),  # empty: the tiny checkpoints are built by the images
            "HF_HUB_OFFLINE": "1",
            "START_TIMEOUT_S": "600",
        }
        self.url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"

    def script(self, *argv: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        r = subprocess.run([str(ROOT / argv[0]), *argv[1:]], cwd=ROOT, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        dt.log(f"{' '.join(argv)} -> exit {r.returncode} in {time.monotonic() - t0:.0f} s")
        return r


@pytest.fixture(scope="module")
def engine(report) -> Iterator[dt.Engine]:
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("debootstrap"):
        pytest.skip("the docker tier needs root, dockerd (docker.io) and debootstrap (tests/apt-packages.txt)")
    eng = dt.Engine()
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()
        assert not Path(eng.run_dir).exists(), "dockerd's run dir is left behind"


@pytest.fixture(scope="module")
def images(engine: dt.Engine, report) -> dict[str, float]:
    ensure_vision_standins()
    t0 = time.monotonic()
    wanted = [tag for tag, *_ in dt.IMAGES if tag.startswith("modelplat/gateway")] + [IMAGE_OF[c] for c in CONFIGS]
    times = {**engine.base_images(), **engine.project_images(wanted)}
    total = time.monotonic() - t0
    for upstream, local in dt.STANDINS.items():
        report.real(f"docker tier: {upstream} replaced by the local stand-in {local} (debootstrapped bookworm)")
    report.real("docker tier: images built in " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
                + f" (total {total:.0f} s)")
    return times


def ensure_vision_standins() -> None:
    """The vision image copies CLIP/face files in (MODELS_FROM=local): stand-ins, as no download works here."""
    out = ROOT / ".run" / "models" / "mt-photos"
    if not out.exists():
        py = ROOT / ".venvs" / "vision" / "bin" / "python"
        subprocess.run([str(py), "-m", "services.vision.build", "standins", str(out)], cwd=ROOT, check=True)


@pytest.fixture(scope="module")
def stack(engine: dt.Engine, images: dict[str, float], tmp_path_factory: pytest.TempPathFactory,
          report) -> Iterator[Stack]:
    s = Stack(engine, tmp_path_factory.mktemp("docker-stack"))
    t0 = time.monotonic()
    r = s.script("start-service.sh", *CONFIGS)
    assert r.returncode == 0, f"start-service.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    report.real(f"docker tier: ./start-service.sh {' '.join(CONFIGS)} (core + {len(CONFIGS)} containers) in "
                f"{time.monotonic() - t0:.0f} s")
    s.start_output = r.stderr
    try:
        yield s
    finally:
        s.script("stop-service.sh", "--all", timeout=300)


def needs(name: str) -> None:
    if name not in CONFIGS:
        pytest.skip(f"{name} not selected by DOCKER_TIER_CONFIGS")


def test_start_prints_how_to_call(stack: Stack):
    out = stack.start_output
    for name, hint in [("tiny-llm", "ollama run tiny-llm"), ("tiny-llm", f"{stack.url}/v1/chat/completions"),
                       ("tiny-flux", f"{stack.url}/v1/images/generations"), ("mt-photos-cpu", "/check")]:
        assert name not in CONFIGS or hint in out
    for name in CONFIGS:
        assert f"[{name}] registered with the gateway" in out


def test_only_the_gateway_publishes_ports(stack: Stack):
    rows = stack.engine.docker("ps", "--format", "{{.Names}}\t{{.Ports}}").stdout.splitlines()
    names = {r.split("\t")[0] for r in rows}
    kinds = {"tiny-llm": "llm", "mt-photos-cpu": "vision", "tiny-flux": "image"}
    assert names == {"modelplat-gateway-1", "modelplat-redis-1"} | {f"modelplat-{c}-{kinds[c]}-1" for c in CONFIGS}
    for row in rows:
        name, _, ports = row.partition("\t")
        assert ("->" in ports) == (name == "modelplat-gateway-1"), row  # EXPOSE alone publishes nothing


def test_openai_chat(stack: Stack, report):
    needs("tiny-llm")
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.url}/v1", api_key="none")
    assert "tiny-llm" in {m.id for m in client.models.list().data}
    r = client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=8)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, stream=True))
    assert len(chunks) > 1
    report.real("docker tier: OpenAI chat (plain + streamed) -> gateway container -> vLLM-CPU container")


def test_ollama(stack: Stack, report):
    needs("tiny-llm")
    import ollama

    for port in (stack.ports["GATEWAY_PORT"], stack.ports["OLLAMA_PORT"]):
        client = ollama.Client(host=f"http://127.0.0.1:{port}")
        assert "tiny-llm:latest" in {m.model for m in client.list().models}
    r = client.chat(model="tiny-llm", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 5})
    assert r.message.content and r.done
    report.real("docker tier: Ollama /api/tags + /api/chat through the gateway's 11434 mapping")


def ocr_image() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (640, 160), "white")
    ImageDraw.Draw(img).text((20, 40), "HELLO DOCKER", fill="black", font=ImageFont.load_default(size=64))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_mtphotos(stack: Stack, report):
    needs("mt-photos-cpu")
    for port in (stack.ports["GATEWAY_PORT"], stack.ports["MTPHOTOS_PORT"]):
        r = httpx.post(f"http://127.0.0.1:{port}/check", headers=KEY, timeout=30)
        assert r.status_code == 200 and r.json()["result"] == "pass", r.text
    r = httpx.post(f"{stack.url}/ocr", headers=KEY, files={"file": ("t.png", ocr_image(), "image/png")}, timeout=300)
    assert r.status_code == 200, r.text
    texts = " ".join(r.json()["result"]["texts"]).replace(" ", "").upper()
    assert "HELLO" in texts, r.text
    assert httpx.post(f"{stack.url}/check", headers={"api-key": "wrong"}, timeout=30).status_code == 401
    report.real("docker tier: MT Photos /check + /ocr (real PP-OCR) -> vision container (OpenVINO CPU)")


def test_openai_images(stack: Stack, report):
    needs("tiny-flux")
    from openai import OpenAI
    from PIL import Image

    client = OpenAI(base_url=f"{stack.url}/v1", api_key="none", timeout=600)
    r = client.images.generate(model="tiny-flux", prompt="a red fox", size="64x64", n=1,
                               response_format="b64_json")
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    assert img.size == (64, 64)
    report.real("docker tier: OpenAI image generation -> diffusers container (tiny FLUX on CPU torch)")


def test_stop_one_config_leaves_the_rest(stack: Stack):
    victim, *rest = CONFIGS[::-1]
    gateway_id = stack.engine.docker("ps", "-q", "--filter", "name=modelplat-gateway-1").stdout.strip()
    r = stack.script("stop-service.sh", victim, timeout=300)
    assert r.returncode == 0, r.stderr
    names = stack.engine.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not any(n.startswith(f"modelplat-{victim}-") for n in names)
    assert all(any(n.startswith(f"modelplat-{c}-") for n in names) for c in rest)
    r = httpx.get(f"{stack.url}/v1/models", timeout=30)
    assert victim not in {m["id"] for m in r.json()["data"]}
    # The gateway kept running (no restart): same container, and the stopped config is "stopped", not unknown.
    assert stack.engine.docker("ps", "-q", "--filter", "name=modelplat-gateway-1").stdout.strip() == gateway_id
    if victim == "tiny-flux":
        r = httpx.post(f"{stack.url}/v1/images/generations", json={"model": "tiny-flux", "prompt": "x"}, timeout=30)
        assert r.status_code == 503 and "start-service.sh tiny-flux" in r.text


def test_stop_all_leaves_nothing(stack: Stack, report):
    r = stack.script("stop-service.sh", "--all", timeout=300)
    assert r.returncode == 0, r.stderr
    left = stack.engine.leftovers()
    # The model cache volume is kept by design (downloads are expensive); everything else is gone.
    assert left == ["volume modelplat-hf-cache"], left
    stack.engine.docker("volume", "rm", "modelplat-hf-cache")
    assert stack.engine.leftovers() == []
    report.real("docker tier: ./stop-service.sh <name> and --all; no container, network or volume left")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
