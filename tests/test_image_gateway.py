"""Issue 5, for real on the CPU: the openai SDK -> gateway -> image service (diffusers) with the tiny
FLUX and Ovis pipelines that services/image/build.py makes offline. No timing thresholds."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import os
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(platform) -> str:
    # Batching on (2 images a call) so it is exercised; a 1 s load so a request can arrive during one.
    os.environ.update(IMAGE_MAX_BATCH="2", IMAGE_LOAD_DELAY_S="1")
    return platform.ensure("tiny-flux", "tiny-ovis")


@pytest.fixture(scope="module")
def admin(platform, gw) -> str:
    return platform.service("tiny-flux")["admin_url"]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_b64_json_flux_and_ovis(gw, report):
    c = client(gw)
    r = c.images.generate(model="tiny-flux", prompt="a cat on a sofa", size="256x128", n=2,
                          response_format="b64_json", extra_body={"steps": 3, "seed": 11})
    assert [png(d.b64_json).size for d in r.data] == [(256, 128), (256, 128)]
    again = c.images.generate(model="tiny-flux", prompt="a cat on a sofa", size="256x128",
                              response_format="b64_json", extra_body={"steps": 3, "seed": 11})
    # same seed, same image (n=2 ran as a batch of 2, this one alone: equal up to float rounding)
    diff = np.abs(np.asarray(png(again.data[0].b64_json), np.int16) - np.asarray(png(r.data[0].b64_json), np.int16))
    assert diff.max() <= 2
    o = c.images.generate(model="tiny-ovis", prompt="a red bowl", size="128x128", response_format="b64_json",
                          extra_body={"steps": 2, "guidance_scale": 4.0, "negative_prompt": "blurry"})
    assert png(o.data[0].b64_json).size == (128, 128)
    report.real("diffusers tiny FLUX/Ovis pipelines behind the gateway, openai SDK images.generate")


def test_url_served_through_gateway(gw):
    r = client(gw).images.generate(model="tiny-flux", prompt="a lake", size="128x128", response_format="url",
                                   extra_body={"steps": 2})
    url = r.data[0].url
    assert url.startswith(gw + "/v1/images/files/tiny-flux.")
    got = httpx.get(url, timeout=60)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (128, 128)
    missing = httpx.get(gw + "/v1/images/files/tiny-flux." + "0" * 32 + ".png", timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("extra,param", [
    (dict(size="250x256"), "size"), (dict(size="1024x1024"), "size"), (dict(n=9), "n"),
    (dict(extra_body={"steps": 0}), "steps"), (dict(extra_body={"steps": 500}), "steps"),
    (dict(prompt=""), "prompt"), (dict(prompt="  "), "prompt"),
])
def test_bad_input_400(gw, extra, param):
    kwargs = dict(model="tiny-flux", prompt="a cat", size="128x128", response_format="b64_json")
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).images.generate(**{**kwargs, **extra})
    err = e.value.response.json()["error"]
    assert e.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"


def test_unknown_and_missing_model(gw):
    with pytest.raises(openai.NotFoundError):
        client(gw).images.generate(model="dall-e-3", prompt="a cat")
    r = httpx.post(gw + "/v1/images/generations", json={"prompt": "a cat"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def lifecycle(admin: str) -> dict:
    return httpx.get(admin + "/admin/lifecycle", timeout=30).json()


def test_lazy_load_idle_unload_reload_and_request_during_load(gw, admin):
    httpx.post(admin + "/admin/unload", timeout=60)
    assert lifecycle(admin)["state"] == "unloaded"
    loads = lifecycle(admin)["loads"]
    # a request arriving while a load runs waits for it (the load takes >= 1 s here)
    loader = threading.Thread(target=lambda: httpx.post(admin + "/admin/load", timeout=120))
    loader.start()
    while lifecycle(admin)["state"] != "loading":
        time.sleep(0.05)
    r = client(gw).images.generate(model="tiny-flux", prompt="during load", size="64x64",
                                   extra_body={"steps": 1}, response_format="b64_json")
    loader.join()
    assert png(r.data[0].b64_json).size == (64, 64) and lifecycle(admin)["loads"] == loads + 1
    # idle unload after the timeout set at run time, then reload on the next request
    assert httpx.post(admin + "/admin/idle-timeout", json={"seconds": 1}, timeout=30).status_code == 200
    deadline = time.monotonic() + 60
    while lifecycle(admin)["state"] != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lifecycle(admin)["state"] == "unloaded"
    httpx.post(admin + "/admin/idle-timeout", json={"seconds": 300}, timeout=30)
    client(gw).images.generate(model="tiny-flux", prompt="again", size="64x64", extra_body={"steps": 1},
                               response_format="b64_json")
    assert lifecycle(admin)["state"] == "ready" and lifecycle(admin)["loads"] == loads + 2


def test_full_queue_429(gw):
    # tiny-flux admits 4 waiting requests; 12 slow ones at once must overflow it
    body = {"model": "tiny-flux", "prompt": "slow", "size": "512x512", "steps": 50, "response_format": "b64_json"}

    def post(_: int) -> httpx.Response:
        return httpx.post(gw + "/v1/images/generations", json=body, timeout=600)

    with cf.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(post, range(12)))
    rejected = [r for r in replies if r.status_code == 429]
    assert rejected and all(r.status_code in (200, 429) for r in replies)
    assert int(rejected[0].headers["Retry-After"]) >= 1
    assert rejected[0].json()["error"]["code"] == "queue_full"


def test_service_simple_api_docs_and_metrics(platform, gw):
    url = platform.service("tiny-ovis")["url"]
    r = httpx.post(url + "/api/generate", json={"prompt": "a cat", "image_size": 128, "denoising_steps": 2,
                                                "cfg_scale": 5, "seed": 1}, timeout=300)
    assert r.status_code == 200, r.text
    img = httpx.get(url + r.json()["url"], timeout=60)
    assert Image.open(io.BytesIO(img.content)).size == (128, 128)
    assert httpx.get(url + "/docs", timeout=30).status_code == 200
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'modelplat_image_images_total{api="simple",config="tiny-ovis"}' in metrics
    assert "modelplat_model_load_seconds" in metrics and "modelplat_image_step_seconds" in metrics
