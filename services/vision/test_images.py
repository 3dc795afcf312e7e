"""Upload decoding: formats, EXIF, sizes and the upstream failure messages."""

import io

import numpy as np
import pytest

pytest.importorskip("cv2")
from PIL import Image

from services.vision.images import MSG_DECODE, MSG_EMPTY, MSG_RANGE, ImageError, decode_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def red_on_grey(mode: str = "RGB") -> Image.Image:
    im = Image.new("RGB", (64, 32), (128, 128, 128))
    im.paste((255, 0, 0), (0, 0, 16, 16))
    return im.convert(mode)


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "CMYK"), ("WEBP", "RGB"),
                                      ("PNG", "L"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")])
def test_formats_decode_to_bgr(fmt, mode):
    img = decode_image(encode(red_on_grey(mode), fmt))
    assert img.shape == (32, 64, 3) and img.dtype == np.uint8
    if mode not in ("L",):  # the red corner is red in BGR order
        b, g, r = img[4, 4].astype(int)
        assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_png():
    arr = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 30).astype(np.uint16)
    img = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert img.shape == (32, 64, 3) and img.dtype == np.uint8


def test_exif_orientation_applied():
    im = Image.new("RGB", (400, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img = decode_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert img.shape[:2] == (400, 200)


def test_gif_first_frame():
    first, second = red_on_grey(), Image.new("RGB", (64, 32), (0, 0, 255))
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second])
    img = decode_image(buf.getvalue(), "image/gif")
    assert img[4, 4, 2] > 200 and img[4, 4, 0] < 60


@pytest.mark.parametrize("data,msg", [
    (b"", MSG_EMPTY),
    (b"not an image at all", MSG_DECODE),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, MSG_DECODE),
])
def test_failures(data, msg):
    with pytest.raises(ImageError) as e:
        decode_image(data)
    assert str(e.value) == msg


def test_size_limit_is_10000():
    assert decode_image(encode(Image.new("L", (10000, 2)), "PNG")).shape == (2, 10000, 3)
    with pytest.raises(ImageError, match=MSG_RANGE):
        decode_image(encode(Image.new("L", (10001, 2)), "PNG"))
    with pytest.raises(ImageError, match=MSG_RANGE):
        decode_image(encode(Image.new("L", (2, 10001)), "PNG"))
