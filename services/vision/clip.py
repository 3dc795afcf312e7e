"""Chinese-CLIP ViT-B/16 (ONNX export of cn_clip): image and text towers, 512-d unnormalised vectors.

Files in <models_dir>/clip/: `<name>.img.fp32.onnx` (image [1,3,224,224] -> unnorm_image_features),
`<name>.txt.fp32.onnx` (text int64 [1,52] -> unnorm_text_features) and `vocab.txt` (BERT Chinese
WordPiece vocabulary, 21128 entries).

Red/blue swap (`clip_swap_red_blue`, default on): the official ONNX/OpenVINO image hands OpenCV's BGR
array to PIL as if it were RGB, so the model sees red and blue exchanged. Libraries indexed by that
image only match new vectors computed the same way; turn it off for a fresh library (correct colours).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from services.vision.backends import BackendSpec, LoadedModel, load_model

SIZE = 224
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
CONTEXT = 52  # [CLS] + 50 tokens + [SEP], zero-padded


def clip_files(clip_dir: Path, name: str) -> dict[str, Path]:
    return {
        "img": clip_dir / f"{name}.img.fp32.onnx",
        "txt": clip_dir / f"{name}.txt.fp32.onnx",
        "vocab": clip_dir / "vocab.txt",
    }


def missing(files: dict[str, Path], keys: tuple[str, ...]) -> list[Path]:
    return [files[k] for k in keys if not files[k].is_file()]


def preprocess_image(img_bgr: np.ndarray, swap_red_blue: bool) -> np.ndarray:
    """Squash-resize to 224x224 (bicubic, no crop), scale, normalise, NCHW float32."""
    arr = img_bgr if swap_red_blue else img_bgr[:, :, ::-1]
    pil = Image.fromarray(np.ascontiguousarray(arr))
    x = np.asarray(pil.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


class Tokenizer:
    """BERT Chinese WordPiece as cn_clip uses it: lower-case, accents stripped, CJK split per character,
    [CLS] + up to 50 pieces + [SEP], zero padding to 52."""

    def __init__(self, vocab: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, normalizers, pre_tokenizers

        tok = HFTokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]", max_input_chars_per_word=200))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok
        self.cls_id = self._id("[CLS]")
        self.sep_id = self._id("[SEP]")
        self.pad_id = self._id("[PAD]")

    def _id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"vocab.txt has no {token} token")
        return i

    def __call__(self, text: str) -> np.ndarray:
        ids = self._tok.encode(text, add_special_tokens=False).ids[: CONTEXT - 2]
        row = [self.cls_id, *ids, self.sep_id]
        out = np.full((1, CONTEXT), self.pad_id, dtype=np.int64)
        out[0, : len(row)] = row
        return out


def format_vector(vec: np.ndarray) -> list[str]:
    return [f"{float(v):.16f}" for v in np.asarray(vec, dtype=np.float32).reshape(-1)]


class ClipImageWorker:
    def __init__(self, model: LoadedModel, swap_red_blue: bool) -> None:
        self._run = model.runner()
        self._swap = swap_red_blue

    def __call__(self, img_bgr: np.ndarray) -> list[str]:
        return format_vector(self._run(preprocess_image(img_bgr, self._swap))[0][0])


class ClipTextWorker:
    def __init__(self, model: LoadedModel, tokenizer: Tokenizer) -> None:
        self._run = model.runner()
        self._tok = tokenizer

    def __call__(self, text: str) -> list[str]:
        return format_vector(self._run(self._tok(text))[0][0])


def load_image_model(files: dict[str, Path], spec: BackendSpec) -> LoadedModel:
    return load_model(files["img"], spec)


def load_text_model(files: dict[str, Path], spec: BackendSpec) -> tuple[LoadedModel, Tokenizer]:
    return load_model(files["txt"], spec), Tokenizer(files["vocab"])
