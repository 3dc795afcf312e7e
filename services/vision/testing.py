"""Test and benchmark helpers (stdlib + numpy + Pillow only, so the gateway env can import them):
run the vision service for real as a process on loopback, build stand-in models with the vision env,
and render OCR / face test images."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
CJK_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc")
KEY = "mt_photos_ai_extra"


def vision_python() -> Path:
    return Path(os.environ.get("PLATFORM_VENVS", ROOT / ".venvs")) / "vision" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_models(out: Path, name: str = "standins") -> Path:
    """Stand-in CLIP/face files (services.vision.build) into `out`, once."""
    if not out.exists():
        r = subprocess.run([str(vision_python()), "-m", "services.vision.build", name, str(out)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building {name} stand-ins failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return out


@dataclass
class Service:
    url: str
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def run_service(
    log: Path, env: dict[str, str], config: str = "mt-photos-cpu", wait_s: float = 120
) -> Iterator[Service]:
    port = free_port()
    cmd = [str(vision_python()), "-m", "services.vision", "--config", config, "--port", str(port)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT)
    svc = Service(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(svc.url + "/healthz", timeout=2).read()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vision service did not start; log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield svc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- images
def font(size: int) -> ImageFont.FreeTypeFont:
    for path in CJK_FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    raise FileNotFoundError("no CJK font: install fonts-wqy-microhei (tests/apt-packages.txt)")


def text_image(lines: list[str], size: int = 40, width: int = 900) -> Image.Image:
    im = Image.new("RGB", (width, 60 + len(lines) * int(size * 2)), "white")
    d = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        d.text((40, 30 + i * int(size * 2)), line, font=font(size), fill="black")
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(im: Image.Image) -> bytes:
    """Pixels stored rotated, with EXIF Orientation=6 saying "rotate 90 CW to display" (a phone photo)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def face_image(shades: tuple[tuple[int, int, int], ...] = ((255, 0, 0),)) -> Image.Image:
    """Grey 640x480 with saturated red squares on the stand-in detector's 32-px grid (RGB colours)."""
    im = Image.new("RGB", (640, 480), (128, 128, 128))
    spots = ((224, 128), (448, 288), (32, 64))
    for (x, y), colour in zip(spots, shades, strict=False):
        im.paste(colour, (x, y, x + 32, y + 32))
    return im


def strip(s: str) -> str:
    return "".join(s.split())


def as_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))[:, :, ::-1].copy()
