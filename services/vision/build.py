"""`python -m services.vision.build NAME OUT_DIR`: offline dev/test model folders for the vision service.

NAME:
  standins       tiny stand-in CLIP and face models (real file names and tensors, random weights): tests
  standins-full  full-size stand-ins (ViT-B/16, RoBERTa-base-sized text tower, SCRFD-10G-like,
                 IResNet-50): benchmarks; ~950 MB
The OCR models need no build: they ship in the rapidocr wheels. Real CLIP/face weights are never
downloaded by the service; the production image fetches them at build time (see Dockerfile).
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.vision import standins

BUILDERS = {"standins": False, "standins-full": True}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in BUILDERS:
        print(f"usage: python -m services.vision.build {{{'|'.join(BUILDERS)}}} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    tmp = out.with_name(out.name + ".partial")
    standins.build(tmp, full=BUILDERS[argv[0]])
    tmp.rename(out)  # only a finished folder appears under its real name
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
