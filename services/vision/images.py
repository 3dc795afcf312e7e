"""Upload decoding, the way MT Photos' official service sees images, with its failure messages.

Result: an 8-bit, 3-channel BGR array (what OpenCV's IMREAD_COLOR gives): EXIF orientation applied,
grey / 16-bit / alpha / CMYK converted, GIFs reduced to their first frame. Failures raise ImageError,
which the API turns into HTTP 200 {"result": [], "msg": ...} like upstream.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

MAX_SIDE = 10000
MSG_EMPTY = "empty file"
MSG_RANGE = "height or width out of range"
MSG_DECODE = "cannot decode image: the uploaded file is not a valid image format or is corrupted"


class ImageError(ValueError):
    """A recoverable bad upload; str(e) is the message returned to MT Photos."""


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header without decoding pixels; None when PIL cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:
        return (MAX_SIDE + 1, MAX_SIDE + 1)
    except Exception:
        return None


def _pil_decode(data: bytes) -> np.ndarray | None:
    """First frame, EXIF-rotated, as BGR; used for GIF and whatever OpenCV cannot read."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            frame = ImageOps.exif_transpose(im.convert("RGB") if im.mode == "P" else im)
            rgb = np.asarray(frame.convert("RGB"))
    except Exception:
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _is_gif(data: bytes, content_type: str | None) -> bool:
    return data[:6] in (b"GIF87a", b"GIF89a") or (content_type or "").lower() == "image/gif"


def decode_image(data: bytes, content_type: str | None = None) -> np.ndarray:
    if not data:
        raise ImageError(MSG_EMPTY)
    size = _header_size(data)
    if size and (size[0] > MAX_SIDE or size[1] > MAX_SIDE):
        raise ImageError(MSG_RANGE)
    img = None
    if not _is_gif(data, content_type):
        # IMREAD_COLOR applies EXIF orientation and converts grey/16-bit/alpha/CMYK to 8-bit BGR,
        # exactly like the upstream service; PIL is only the fallback.
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        img = _pil_decode(data)
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(MSG_DECODE)
    if img.shape[0] > MAX_SIDE or img.shape[1] > MAX_SIDE:
        raise ImageError(MSG_RANGE)
    return img
