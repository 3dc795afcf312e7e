"""CLIP, face and OCR pipelines on stand-in models (tiny) and the real OCR models, both backends."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
from services.vision import clip, face, ocr, standins
from services.vision.backends import BackendSpec

BACKENDS = ("openvino", "onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return standins.build(tmp_path_factory.mktemp("standins"))


def face_image() -> np.ndarray:
    img = np.full((480, 640, 3), 128, np.uint8)
    img[128:160, 224:256] = (0, 0, 255)  # saturated red (BGR): a strong face
    img[288:320, 448:480] = (40, 40, 255)  # weaker red: a second face
    img[64:96, 32:64] = (70, 70, 255)  # pale: below DETECTION_THRESH
    return img


def test_tokenizer(models):
    tok = clip.Tokenizer(models / "clip" / "vocab.txt")
    ids = tok("飞机 Airplane!")
    assert ids.shape == (1, 52) and ids.dtype == np.int64
    assert ids[0, 0] == 101 and 102 in ids[0] and ids[0, -1] == 0
    assert tok("")[0, :3].tolist() == [101, 102, 0]
    assert tok("飞" * 80)[0, 51] == 102  # truncated to 50 pieces + [SEP]


def test_clip_preprocess_swap():
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    swapped, correct = clip.preprocess_image(img, True), clip.preprocess_image(img, False)
    assert swapped.shape == (1, 3, 224, 224)
    assert correct[0, 0].mean() > correct[0, 2].mean() and swapped[0, 2].mean() > swapped[0, 0].mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_face_matches_insightface(models, backend):
    from insightface.app import FaceAnalysis

    files = face.face_files(models / "insightface" / "models" / "buffalo_l", "buffalo_l")
    ours = face.FaceModels(files, BackendSpec(backend, "CPU"), 0.65).worker()(face_image())
    fa = FaceAnalysis(name=str(files["det"].parent), allowed_modules=["detection", "recognition"],
                      providers=["CPUExecutionProvider"])
    fa.prepare(ctx_id=0, det_thresh=0.65, det_size=(640, 640))
    ref = fa.get(face_image())
    assert len(ours) == len(ref) == 2
    assert ours[0]["facial_area"] == {"x": 160, "y": 64, "w": 128, "h": 128}
    for o, r in zip(ours, ref, strict=True):
        assert abs(o["face_confidence"] - float(r.det_score)) < 1e-5
        assert np.allclose(o["embedding"], r.normed_embedding, atol=1e-5)
        assert abs(np.linalg.norm(o["embedding"]) - 1) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_face_crops_batched_match_one_by_one(models, backend):
    files = face.face_files(models / "insightface" / "models" / "buffalo_l", "buffalo_l")
    fm = face.FaceModels(files, BackendSpec(backend, "CPU"), 0.65)
    assert fm.rec.batchable and not fm.det.batchable  # [None,3,112,112] vs det_10g's fixed [1,3,?,?]
    batched, single = fm.worker(), fm.worker()
    single._rec_batchable = False
    a, b = batched(face_image()), single(face_image())
    assert len(a) == len(b) == 2 and a[0]["embedding"] != a[1]["embedding"]  # order kept, not mixed up
    for x, y in zip(a, b, strict=True):
        assert x["facial_area"] == y["facial_area"] and np.allclose(x["embedding"], y["embedding"], atol=1e-5)


def test_face_batch_of_unexpected_shape_falls_back_to_one_by_one(models):
    files = face.face_files(models / "insightface" / "models" / "buffalo_l", "buffalo_l")
    fm = face.FaceModels(files, BackendSpec("openvino", "CPU"), 0.65)
    ref = fm.worker()(face_image())
    w = fm.worker()
    real, calls = w._rec, []

    def static_batch_one(x: np.ndarray) -> list[np.ndarray]:  # a recogniser that only honours row 0
        calls.append(len(x))
        return [real(x[:1])[0]]

    w._rec = static_batch_one
    got = w(face_image())
    assert calls == [2, 1, 1]
    assert np.allclose([f["embedding"] for f in got], [f["embedding"] for f in ref], atol=1e-5)


def test_backends_agree_on_clip(models):
    files = clip.clip_files(models / "clip", "vit-b-16")
    img = face_image()
    out = {}
    for b in BACKENDS:
        spec = BackendSpec(b, "CPU")
        m, tok = clip.load_text_model(files, spec)
        out[b] = (clip.ClipImageWorker(clip.load_image_model(files, spec), True)(img),
                  clip.ClipTextWorker(m, tok)("一只猫 a cat"))
    for i in range(2):
        a, b = (np.array(out[k][i], dtype=np.float64) for k in BACKENDS)
        assert len(a) == 512 and np.allclose(a, b, atol=1e-5)
    assert all(len(s.split(".")[1]) == 16 for s in out["openvino"][0])


def test_openvino_auto_runs_and_missing_gpu_is_a_clear_error(models, report):
    from services.vision.backends import BackendError, load_model

    files = clip.clip_files(models / "clip", "vit-b-16")
    vec = clip.ClipImageWorker(load_model(files["img"], BackendSpec("openvino", "AUTO", "auto")), True)(face_image())
    assert len(vec) == 512
    with pytest.raises(BackendError, match="not available here"):
        load_model(files["img"], BackendSpec("openvino", "GPU", "auto"))
    report.validated("vision: OpenVINO GPU device (Intel Arc, config mt-photos)", "no Intel GPU here; AUTO ran on CPU")


def test_ocr_rec_fixed_width_buckets_read_the_same_characters():
    from services.vision.testing import as_array, text_image

    img = as_array(text_image(["营业时间 9:00-21:00", "Hello World"]))
    spec = BackendSpec("onnxruntime", "CPU")
    dynamic = ocr.OcrModels("PP-OCRv4", spec, dynamic_width=True).worker()(img)
    fixed = ocr.OcrModels("PP-OCRv4", spec, dynamic_width=False).worker()(img)
    # Extra padding can move a space between Latin words (why dynamic width is the default).
    assert [t.replace(" ", "") for t in fixed["texts"]] == [t.replace(" ", "") for t in dynamic["texts"]]
    assert dynamic["texts"]


def test_ocr_format_and_rec_width_padding():
    boxes = np.array([[[4, 7], [287, 7], [287, 28], [4, 28]]], np.float32)
    r = ocr.format_result(boxes, ("hi",), (0.987,))
    assert r == {"texts": ["hi"], "scores": ["0.99"], "boxes": [{"x": "4.0", "y": "7.0", "width": "283.0",
                                                                  "height": "21.0"}]}
    assert ocr.format_result(None, None, None) == {"texts": [], "scores": [], "boxes": []}


@pytest.mark.parametrize("model", ["PP-OCRv4", "PP-OCRv6"])
def test_ocr_model_files_ship_in_wheels(model):
    assert all(p.is_file() for p in ocr.model_files(model).values())
