"""Issue 4, for real: the MT Photos AI service run as a process on loopback, through its real loaders:
real PP-OCR models from the rapidocr wheels, stand-in CLIP/face ONNX files (real names and tensors)
built by a fixture; OpenVINO and ONNX Runtime backends; every error case of the contract."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from services.vision import testing as vt

pytestmark = pytest.mark.integration
BACKENDS = ("openvino", "onnxruntime")
H = {"api-key": vt.KEY}
ZH = ["营业时间九点到晚上九点", "欢迎光临本店"]
EN = ["Hello World 2024", "Photo album OCR test"]
MIXED = ["MT Photos 相册 OCR", "电话 010-12345678"]


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> Path:
    return vt.build_models(tmp_path_factory.getbasetemp() / "vision-standins")


@pytest.fixture(scope="module")
def services(standins, tmp_path_factory):
    logs = tmp_path_factory.mktemp("vision-logs")
    env = {"VISION_MODELS_DIR": str(standins), "IDLE_TIMEOUT_S": "0", "OCR_WORKERS": "2"}
    with vt.run_service(logs / "openvino.log", {**env, "VISION_BACKEND": "openvino"}) as ov, \
         vt.run_service(logs / "onnxruntime.log", {**env, "VISION_BACKEND": "onnxruntime"}) as ort:
        yield {"openvino": ov.url, "onnxruntime": ort.url}


@pytest.fixture(params=BACKENDS)
def url(request, services) -> str:
    return services[request.param]


def post(url: str, path: str, data: bytes | None = None, name: str = "a.png", ctype: str = "image/png",
         headers: dict | None = None, **kw) -> requests.Response:
    files = {"file": (name, data, ctype)} if data is not None else None
    return requests.post(url + path, files=files, headers=H if headers is None else headers, timeout=120, **kw)


def joined(texts: list[str]) -> str:
    return vt.strip("".join(texts))


def ocr_texts(url: str, data: bytes, **kw) -> list[str]:
    r = post(url, "/ocr", data, **kw)
    assert r.status_code == 200, r.text
    return r.json()["result"]["texts"]


# ---------------------------------------------------------------- contract basics
def test_index_check_and_auth(url, report):
    assert requests.get(url + "/", timeout=10).status_code == 200  # no key needed
    r = requests.post(url + "/check", headers=H, timeout=10).json()
    assert r["result"] == "pass" and r["recognition_model"] == "buffalo_l" and r["facial_min_score"] == 0.65
    wrong = requests.post(url + "/check", headers={"api-key": "nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid API key"}
    upper = requests.post(url + "/check", headers={"API-KEY": vt.KEY}, timeout=10)
    assert upper.status_code == 200
    missing = requests.post(url + "/check", timeout=10)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["header", "api-key"]
    assert requests.get(url + "/check", headers=H, timeout=10).status_code == 405
    assert requests.post(url + "/restart", headers=H, timeout=10).json() == {"result": "pass"}
    report.real("vision: MT Photos AI service (OpenVINO 2026 and ONNX Runtime CPU) on loopback")


# ---------------------------------------------------------------- OCR with the real PP-OCRv4 models
@pytest.mark.parametrize("lines", [ZH, EN, MIXED], ids=["chinese", "english", "mixed"])
def test_ocr_reads_rendered_text(url, lines, report):
    r = post(url, "/ocr", vt.encode(vt.text_image(lines)))
    result = r.json()["result"]
    # PP-OCRv4 (the upstream default) drops spaces between Latin words, and the detector may split a
    # line at a wide gap: compare the text in reading order without spaces.
    assert joined(result["texts"]) == joined(lines)
    assert all(isinstance(s, str) and float(s) >= 0.8 for s in result["scores"])
    for box in result["boxes"]:
        assert set(box) == {"x", "y", "width", "height"} and all(isinstance(v, str) for v in box.values())
        assert float(box["width"]) > 0 and float(box["height"]) > 0
    report.real("vision: OCR with PP-OCRv4 mobile (rapidocr-onnxruntime wheel files) on rendered text")


def test_ocr_applies_exif_orientation(url):
    data = vt.exif_rotated_jpeg(vt.text_image(EN))
    assert joined(ocr_texts(url, data, name="a.jpg", ctype="image/jpeg")) == joined(EN)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA"])
def test_ocr_grey_16bit_alpha(url, mode):
    im = vt.text_image(EN[:1])
    grey16 = np.asarray(im.convert("L")).astype(np.uint16) * 257
    im = Image.fromarray(grey16) if mode == "I;16" else im.convert(mode)
    assert joined(ocr_texts(url, vt.encode(im))) == joined(EN[:1])


def test_ocr_blank_image(url):
    r = post(url, "/ocr", vt.encode(Image.new("RGB", (800, 600), "white")))
    assert r.json() == {"result": {"texts": [], "scores": [], "boxes": []}}


# ---------------------------------------------------------------- recoverable failures: 200 + msg
BAD = {
    "empty": (b"", "empty file"),
    "garbage": (b"this is not an image", "cannot decode image"),
    "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200), "cannot decode image"),
    "too-wide": (vt.encode(Image.new("L", (10001, 4))), "height or width out of range"),
    "too-tall": (vt.encode(Image.new("L", (4, 10001))), "height or width out of range"),
}


@pytest.mark.parametrize("path", ["/ocr", "/clip/img", "/represent"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_answer_200_with_msg(url, path, case):
    data, msg = BAD[case]
    r = post(url, path, data)
    assert r.status_code == 200 and r.json()["result"] == [] and msg in r.json()["msg"]


def test_size_limit_boundary_is_allowed(url):
    assert post(url, "/ocr", vt.encode(Image.new("L", (10000, 4), 255))).json()["result"]["texts"] == []
    assert post(url, "/represent", vt.encode(Image.new("L", (4, 10000), 128))).json()["result"] == []


def test_request_shape_errors_are_422(url):
    no_file = requests.post(url + "/ocr", files={"other": ("a.png", b"x")}, headers=H, timeout=10)
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["loc"] == ["body", "file"]
    assert requests.post(url + "/clip/txt", json={}, headers=H, timeout=10).status_code == 422
    assert requests.post(url + "/clip/txt", data={"text": "x"}, headers=H, timeout=10).status_code == 422


# ---------------------------------------------------------------- CLIP and face through the real loaders
def test_clip_vectors_are_512_strings(url, report):
    img = post(url, "/clip/img", vt.encode(vt.face_image())).json()["result"]
    txt = requests.post(url + "/clip/txt", json={"text": "飞机"}, headers=H, timeout=60).json()["result"]
    empty = requests.post(url + "/clip/txt", json={"text": ""}, headers=H, timeout=60).json()["result"]
    for vec in (img, txt, empty):
        assert len(vec) == 512 and all(isinstance(v, str) and len(v.split(".")[1]) == 16 for v in vec)
    assert img != post(url, "/clip/img", vt.encode(vt.text_image(EN))).json()["result"]
    report.real("vision: CLIP image/text towers through the real loaders (stand-in ViT-B/16 files)")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG-CMYK", "WEBP", "GIF", "RGBA"])
def test_represent_finds_the_red_squares(url, fmt, report):
    im = vt.face_image(((255, 0, 0), (255, 40, 40), (255, 70, 70)))  # strong, weaker, below threshold
    if fmt == "JPEG-CMYK":
        data, ctype = vt.encode(im.convert("CMYK"), "JPEG", quality=100), "image/jpeg"
    elif fmt == "GIF":  # the first frame has the faces, the second is blank
        import io

        buf = io.BytesIO()
        im.save(buf, "GIF", save_all=True, append_images=[Image.new("RGB", im.size, (128, 128, 128))])
        data, ctype = buf.getvalue(), "image/gif"
    elif fmt == "RGBA":
        data, ctype = vt.encode(im.convert("RGBA")), "image/png"
    else:
        data, ctype = vt.encode(im, fmt), f"image/{fmt.lower()}"
    body = post(url, "/represent", data, ctype=ctype).json()
    assert body["detector_backend"] == "insightface" and body["recognition_model"] == "buffalo_l"
    faces = body["result"]
    assert len(faces) == 2, body
    assert faces[0]["facial_area"] == {"x": 160, "y": 64, "w": 128, "h": 128}
    assert faces[0]["face_confidence"] > faces[1]["face_confidence"] >= 0.65
    for f in faces:
        assert len(f["embedding"]) == 512 and abs(np.linalg.norm(f["embedding"]) - 1) < 1e-4
        assert all(isinstance(v, float) for v in f["embedding"][:5])
    report.real("vision: face detection + recognition (stand-in buffalo_l det_10g/w600k_r50 files)")


def test_represent_no_face(url):
    body = post(url, "/represent", vt.encode(Image.new("RGB", (640, 480), (128, 128, 128)))).json()
    assert body["result"] == [] and "msg" not in body


# ---------------------------------------------------------------- both backends, same answers
def test_backends_give_the_same_outputs(services, report):
    ov, ort = services["openvino"], services["onnxruntime"]
    text = vt.encode(vt.text_image(MIXED))
    assert post(ov, "/ocr", text).json() == post(ort, "/ocr", text).json()
    face = vt.encode(vt.face_image(((255, 0, 0), (255, 40, 40))))
    for path in ("/clip/img",):
        a, b = (np.array(post(u, path, face).json()["result"], dtype=np.float64) for u in (ov, ort))
        assert np.allclose(a, b, atol=1e-4)
    a, b = (requests.post(u + "/clip/txt", json={"text": "猫 cat"}, headers=H, timeout=60).json()["result"]
            for u in (ov, ort))
    assert np.allclose(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64), atol=1e-4)
    fa, fb = (post(u, "/represent", face).json()["result"] for u in (ov, ort))
    assert [f["facial_area"] for f in fa] == [f["facial_area"] for f in fb]
    assert np.allclose([f["embedding"] for f in fa], [f["embedding"] for f in fb], atol=1e-4)
    report.real("vision: OpenVINO (f32) and ONNX Runtime outputs compared on the same inputs")


# ---------------------------------------------------------------- concurrency and lifecycle
def test_eight_concurrent_clients(url):
    texts = {n: vt.encode(vt.text_image(lines)) for n, lines in (("zh", ZH), ("en", EN), ("mixed", MIXED))}
    face = vt.encode(vt.face_image())
    serial = {n: post(url, "/ocr", d).json() for n, d in texts.items()}
    serial_face = post(url, "/represent", face).json()

    def client(i: int) -> bool:
        for n, d in texts.items():
            assert post(url, "/ocr", d).json() == serial[n]
        got = post(url, "/represent", face).json()
        assert [f["facial_area"] for f in got["result"]] == [f["facial_area"] for f in serial_face["result"]]
        assert len(post(url, "/clip/img", face).json()["result"]) == 512
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(client, range(8)))


def test_restart_v2_answers_and_keeps_in_flight_requests(url):
    data = vt.encode(vt.text_image(EN))
    expected = joined(EN)
    ocr_texts(url, data)  # loaded
    before = requests.get(url + "/admin/lifecycle", timeout=10).json()["tasks"]["ocr"]["loads"]
    results: list[str] = []

    def one() -> None:
        results.append(joined(ocr_texts(url, data)))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    r = requests.post(url + "/restart_v2", headers=H, timeout=10)
    assert r.status_code == 200 and r.json() == {"result": "pass"}
    for t in threads:
        t.join(120)
    assert results == [expected] * 6
    assert joined(ocr_texts(url, data)) == expected
    deadline = time.monotonic() + 60
    while requests.get(url + "/admin/lifecycle", timeout=10).json()["tasks"]["ocr"]["loads"] <= before:
        assert time.monotonic() < deadline, "the OCR models were not reloaded"
        time.sleep(0.2)


def test_idle_release_and_lazy_reload(url):
    face = vt.encode(vt.face_image())
    first = post(url, "/clip/img", face).json()["result"]
    assert requests.post(url + "/admin/idle-timeout", json={"seconds": 0.3}, timeout=10).status_code == 200
    try:
        deadline = time.monotonic() + 30
        while requests.get(url + "/admin/lifecycle", timeout=10).json()["tasks"]["clip_img"]["state"] != "unloaded":
            assert time.monotonic() < deadline, "idle models were not released"
            time.sleep(0.1)
        assert post(url, "/clip/img", face).json()["result"] == first  # loads again, same answer
    finally:
        requests.post(url + "/admin/idle-timeout", json={"seconds": 0}, timeout=10)


# ---------------------------------------------------------------- no CLIP/face files; PP-OCRv6
def test_missing_models_give_a_clear_message_and_ppocrv6_is_selectable(tmp_path, report):
    env = {"VISION_MODELS_DIR": str(tmp_path / "empty"), "OCR_MODEL": "PP-OCRv6", "VISION_BACKEND": "onnxruntime"}
    with vt.run_service(tmp_path / "svc.log", env) as svc:
        for path in ("/clip/img", "/represent"):
            body = post(svc.url, path, vt.encode(vt.face_image())).json()
            assert body["result"] == [] and "not installed" in body["msg"] and "VISION_MODELS_DIR" in body["msg"]
        body = requests.post(svc.url + "/clip/txt", json={"text": "x"}, headers=H, timeout=10).json()
        assert body["result"] == [] and "vocab.txt" in body["msg"]
        texts = ocr_texts(svc.url, vt.encode(vt.text_image(EN)))
        assert joined(texts) == joined(EN) and any(" " in t for t in texts)  # v6 keeps the spaces
    report.real("vision: OCR with PP-OCRv6 small (rapidocr 3.10 wheel files)")
