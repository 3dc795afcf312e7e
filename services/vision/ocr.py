"""OCR: RapidOCR's PP-OCR pipeline (pre/post-processing from the `rapidocr` 3.10 package) running on
our backends, with the model files that the rapidocr wheels ship (nothing is downloaded).

- PP-OCRv4 mobile det/rec + v2 cls from `rapidocr_onnxruntime` (what the official image uses, so the
  text matches libraries that were indexed by it);
- PP-OCRv6 small det/rec from `rapidocr` 3.10 (better at spaces between Latin words), same cls.

Each worker is its own RapidOCR object bound to its own inference requests: the rapidocr classes
keep per-call state on the instance, so instances are never shared between threads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from services.vision.backends import BackendSpec, LoadedModel, Runner, load_model

REC_WIDTH_BUCKET = 320  # recogniser width step when OCR_REC_DYNAMIC_WIDTH=0


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"python package {name!r} (OCR model files) is not installed")
    return Path(spec.origin).parent


def model_files(ocr_model: str) -> dict[str, Path]:
    """det/cls/rec ONNX files for `ocr_model`, from the installed wheels."""
    v4 = _package_dir("rapidocr_onnxruntime") / "models"
    cls = v4 / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if ocr_model == "PP-OCRv4":
        return {"det": v4 / "ch_PP-OCRv4_det_infer.onnx", "cls": cls, "rec": v4 / "ch_PP-OCRv4_rec_infer.onnx"}
    if ocr_model == "PP-OCRv6":
        v6 = _package_dir("rapidocr") / "models"
        return {"det": v6 / "PP-OCRv6_det_small.onnx", "cls": cls, "rec": v6 / "PP-OCRv6_rec_small.onnx"}
    raise ValueError(f"unknown OCR model {ocr_model!r}")


class _Session:
    """What rapidocr's pipeline classes call: x -> first output, plus the ONNX metadata dictionary."""

    def __init__(self, model: LoadedModel, runner: Runner, pad_width: bool = False) -> None:
        self._model = model
        self._run = runner
        self._pad = pad_width

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._pad and x.ndim == 4:
            # Fixed width buckets: fewer distinct input shapes for plugins that compile per shape.
            w = x.shape[3]
            target = math.ceil(w / REC_WIDTH_BUCKET) * REC_WIDTH_BUCKET
            if target != w:
                x = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, target - w)))
        return self._run(np.ascontiguousarray(x, dtype=np.float32))[0]

    def have_key(self, key: str = "character") -> bool:
        return self._model.metadata(key) is not None

    def get_character_list(self, key: str = "character") -> list[str]:
        return (self._model.metadata(key) or "").splitlines()


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _inject(session: _Session) -> Iterator[None]:
    """rapidocr's classes build their engine in __init__ through `get_engine`; hand them ours instead
    (for the duration of one constructor) so no model is loaded twice and none is ever downloaded."""
    import rapidocr.ch_ppocr_cls.main as cls_mod
    import rapidocr.ch_ppocr_det.main as det_mod
    import rapidocr.ch_ppocr_rec.main as rec_mod

    mods = (det_mod, cls_mod, rec_mod)
    saved = [m.get_engine for m in mods]
    for m in mods:
        m.get_engine = lambda _engine_type: (lambda _cfg: session)
    try:
        yield
    finally:
        for m, fn in zip(mods, saved, strict=True):
            m.get_engine = fn


class OcrModels:
    """The three compiled models, shared by every worker."""

    def __init__(self, ocr_model: str, spec: BackendSpec, dynamic_width: bool = True) -> None:
        files = model_files(ocr_model)
        self.models = {k: load_model(p, spec) for k, p in files.items()}
        self.dynamic_width = dynamic_width
        self.ocr_model = ocr_model

    def worker(self) -> OcrWorker:
        return OcrWorker(self)


class OcrWorker:
    def __init__(self, models: OcrModels) -> None:
        from rapidocr import RapidOCR
        from rapidocr.ch_ppocr_cls import TextClassifier
        from rapidocr.ch_ppocr_det import TextDetector
        from rapidocr.ch_ppocr_rec import TextRecognizer

        self.engine = RapidOCR(params={"Global.log_level": "warning"})
        cfg = self.engine.cfg
        # The keys RapidOCR's own lazy loaders would fill in before building each stage.
        cfg.Rec.font_path = cfg.Global.font_path
        for stage in (cfg.Det, cfg.Cls, cfg.Rec):
            stage.model_root_dir = cfg.Global.model_root_dir
        m = models.models
        with _PATCH_LOCK:
            with _inject(_Session(m["det"], m["det"].runner())):
                self.engine.text_det = TextDetector(cfg.Det)
            with _inject(_Session(m["cls"], m["cls"].runner())):
                self.engine.text_cls = TextClassifier(cfg.Cls)
            pad = not models.dynamic_width
            with _inject(_Session(m["rec"], m["rec"].runner(), pad_width=pad)):
                self.engine.text_rec = TextRecognizer(cfg.Rec)

    def __call__(self, img_bgr: np.ndarray) -> dict[str, Any]:
        from rapidocr.utils.process_img import ResizeImgError

        try:
            out = self.engine(img_bgr)
        except ResizeImgError:
            # A sliver (e.g. 10000x4) shrinks below one pixel at the 2000-px cap: it holds no text.
            return format_result(None, None, None)
        return format_result(getattr(out, "boxes", None), getattr(out, "txts", None), getattr(out, "scores", None))


def _num(v: float) -> str:
    return str(round(float(v), 2))


def format_result(boxes: Any, texts: Any, scores: Any) -> dict[str, Any]:
    """The MT Photos shape: strings for scores (2 decimals) and box numbers; the box is the quad's
    top-left corner, top edge width and left-to-bottom height, like the official service."""
    result: dict[str, Any] = {"texts": [], "scores": [], "boxes": []}
    if boxes is None or texts is None or scores is None:
        return result
    for quad, text, score in zip(boxes, texts, scores, strict=False):
        q = np.asarray(quad, dtype=np.float64)
        result["texts"].append(str(text))
        result["scores"].append(f"{float(score):.2f}")
        width, height = q[1][0] - q[0][0], q[2][1] - q[0][1]
        result["boxes"].append({"x": _num(q[0][0]), "y": _num(q[0][1]), "width": _num(width), "height": _num(height)})
    return result
