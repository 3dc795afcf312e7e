"""Issue 4 through the gateway, for real: MT Photos client calls -> gateway (main port) -> the vision
service started by the local runtime (`./start-service.sh --local mt-photos-cpu`), stand-in CLIP/face
files built by a fixture, real OCR models."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from services.vision import testing as vt

pytestmark = pytest.mark.integration
H = {"api-key": vt.KEY}
LINES = ["欢迎光临 Welcome 2024", "营业时间 9:00-21:00"]


@pytest.fixture(scope="module")
def gateway(platform) -> str:
    # The platform fixture points mt-photos-cpu at stand-in CLIP/face files, whichever test starts it.
    return platform.ensure("mt-photos-cpu")


def test_mtphotos_through_the_gateway(gateway, report):
    assert requests.post(gateway + "/check", headers=H, timeout=30).json()["result"] == "pass"
    wrong = requests.post(gateway + "/check", headers={"api-key": "bad"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid API key"}
    img = vt.encode(vt.text_image(LINES))
    ocr = requests.post(gateway + "/ocr", files={"file": ("a.png", img, "image/png")}, headers=H, timeout=120).json()
    assert vt.strip("".join(ocr["result"]["texts"])) == vt.strip("".join(LINES))
    txt = requests.post(gateway + "/clip/txt", json={"text": "飞机"}, headers=H, timeout=120).json()["result"]
    face = vt.encode(vt.face_image())
    clip = requests.post(gateway + "/clip/img", files={"file": ("f.png", face)}, headers=H, timeout=120).json()
    rep = requests.post(gateway + "/represent", files={"file": ("f.png", face)}, headers=H, timeout=120).json()
    assert len(txt) == 512 and len(clip["result"]) == 512
    assert rep["result"][0]["facial_area"] == {"x": 160, "y": 64, "w": 128, "h": 128}
    bad = requests.post(gateway + "/ocr", files={"file": ("x.heic", b"junk")}, headers=H, timeout=30).json()
    assert bad["result"] == [] and "cannot decode" in bad["msg"]
    assert requests.post(gateway + "/restart_v2", headers=H, timeout=30).json() == {"result": "pass"}
    report.real("vision: MT Photos routes on the gateway's main port -> mt-photos-cpu (local runtime)")


def test_eight_concurrent_clients_through_the_gateway(gateway):
    face = vt.encode(vt.face_image())
    img = vt.encode(vt.text_image(LINES))

    def client(i: int) -> tuple[str, list[float]]:
        o = requests.post(gateway + "/ocr", files={"file": ("a.png", img)}, headers=H, timeout=300).json()
        r = requests.post(gateway + "/represent", files={"file": ("f.png", face)}, headers=H, timeout=300).json()
        return "".join(o["result"]["texts"]), r["result"][0]["embedding"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    assert len({t for t, _ in results}) == 1
    assert all(np.allclose(e, results[0][1]) for _, e in results)
