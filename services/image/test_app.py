"""The HTTP layer, queue, batching and lifecycle with a fake engine (no torch): fast and exact."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from gateway.configs import load_catalog
from services.image.app import create_app
from services.image.jobs import Job, Result
from services.image.service import ImageService, Settings


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[list[Job]] = []
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, jobs: list[Job]) -> list[Result]:
        self.gate.wait(10)
        self.calls.append(jobs)
        out = []
        for j in jobs:
            seeds = [(j.seed or 0) + i for i in range(j.n)]
            out.append(Result([Image.new("RGB", (j.width, j.height), (i, 0, 0)) for i in range(j.n)], seeds, 0.1, 0.01))
        return out


def make(tmp_path: Path, **overrides) -> tuple[ImageService, FakeEngine, httpx.AsyncClient]:
    cfg = load_catalog().require("tiny-flux")
    s = dict(models_dir=tmp_path, idle_timeout_s=0, queue_size=2, max_batch=2, url_ttl_s=60,
             output_dir=tmp_path / "out", compile_cache=tmp_path / "cc", cfg_batch_max_pixels=0)
    engine = FakeEngine()
    svc = ImageService(cfg, "cpu", Settings(**{**s, **overrides}), loader=lambda *_: engine)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://svc")
    return svc, engine, client


async def test_lazy_load_b64_and_url(tmp_path: Path) -> None:
    svc, _engine, c = make(tmp_path)
    assert (await c.get("/healthz")).json()["state"] == "unloaded"
    r = await c.post("/v1/images/generations", json={"model": "tiny-flux", "prompt": "a cat", "size": "128x64",
                                                    "n": 2, "seed": 5})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["seed"] for d in data] == [5, 6]
    assert Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))).size == (128, 64)
    assert svc.lc.state.value == "ready" and svc.lc.stats.loads == 1
    r = await c.post("/v1/images/generations", json={"prompt": "a cat", "response_format": "url"},
                     headers={"X-Forwarded-Host": "gw:8080"})
    url = r.json()["data"][0]["url"]
    assert url.startswith("http://gw:8080/v1/images/files/tiny-flux.")
    png = await c.get(url.replace("http://gw:8080", ""))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert (await c.get("/v1/images/files/tiny-flux." + "0" * 32 + ".png")).status_code == 404


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "size": "100x100"}, "size"), ({"prompt": "x", "size": "4096x4096"}, "size"),
    ({"prompt": "x", "n": 99}, "n"), ({"prompt": "x", "steps": 0}, "steps"), ({"prompt": "x", "steps": 999}, "steps"),
    ({"prompt": ""}, "prompt"), ({}, "prompt"), ({"prompt": "x", "n": "two"}, "n"),
    ({"prompt": "x", "response_format": "jpeg"}, "response_format"),
])
async def test_bad_input_is_openai_400(tmp_path: Path, body: dict, param: str) -> None:
    svc, _engine, c = make(tmp_path)
    r = await c.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert svc.lc.stats.loads == 0  # bad input never loads the model


async def test_unknown_model_404(tmp_path: Path) -> None:
    _, _, c = make(tmp_path)
    r = await c.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_queue_full_429_and_batching(tmp_path: Path) -> None:
    svc, engine, c = make(tmp_path, queue_size=2, max_batch=2)
    engine.gate.clear()  # the engine blocks: requests pile up
    first = asyncio.create_task(c.post("/v1/images/generations", json={"prompt": "a", "size": "64x64"}))
    while not svc.scheduler.running:
        await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(c.post("/v1/images/generations", json={"prompt": p, "size": "64x64"}))
               for p in ("b", "c")]
    while len(svc.scheduler.waiting) < 2:
        await asyncio.sleep(0.01)
    r = await c.post("/v1/images/generations", json={"prompt": "d", "size": "64x64"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    engine.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert [x.status_code for x in results] == [200, 200, 200]
    assert [len(call) for call in engine.calls] == [1, 2]  # b and c shared one pipeline call


async def test_requests_during_load_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_LOAD_DELAY_S", "0.3")
    svc, _engine, c = make(tmp_path, max_batch=1)
    reqs = [asyncio.create_task(c.post("/v1/images/generations", json={"prompt": str(i), "size": "64x64"}))
            for i in range(2)]
    while svc.lc.state.value != "loading":
        await asyncio.sleep(0.01)
    assert all(r.status_code == 200 for r in await asyncio.gather(*reqs))
    assert svc.lc.stats.loads == 1


async def test_idle_unload_and_reload(tmp_path: Path) -> None:
    svc, _engine, c = make(tmp_path)
    assert (await c.post("/v1/images/generations", json={"prompt": "a"})).status_code == 200
    r = await c.post("/admin/idle-timeout", json={"seconds": 0.2})
    assert r.json()["idle_timeout_s"] == 0.2
    for _ in range(100):
        if svc.lc.state.value == "unloaded":
            break
        await asyncio.sleep(0.05)
    assert svc.lc.state.value == "unloaded" and svc.lc.stats.unloads == 1
    assert (await c.post("/v1/images/generations", json={"prompt": "a"})).status_code == 200
    assert svc.lc.stats.loads == 2


async def test_simple_api_outputs_docs_metrics(tmp_path: Path) -> None:
    _, _, c = make(tmp_path)
    r = await c.post("/api/generate", json={"prompt": "a cat", "image_size": 128, "denoising_steps": 3,
                                            "cfg_scale": 4.0, "seed": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 9 and body["image_size"] == "128x128"
    assert Image.open(io.BytesIO((await c.get(body["url"])).content)).size == (128, 128)
    bad = await c.post("/api/generate", json={"prompt": "a cat", "image_size": 100})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "image_size"
    assert (await c.get("/docs")).status_code == 200
    metrics = (await c.get("/metrics")).text
    for name in ("modelplat_image_images_total", "modelplat_image_step_seconds", "modelplat_queue_depth",
                 "modelplat_model_loads_total", "modelplat_image_errors_total"):
        assert name in metrics
