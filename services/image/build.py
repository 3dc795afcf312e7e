"""Offline builder for dev/test checkpoints: `python -m services.image.build tiny-flux|tiny-ovis OUT_DIR`.

Writes a diffusers folder that `FluxPipeline/OvisImagePipeline.from_pretrained(OUT_DIR)` loads with
HF_HUB_OFFLINE=1. The folder is written next to OUT_DIR and renamed into place, so a reader never sees
a half-written checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once, at huggingface_hub import time

import argparse
import shutil
import sys
import time
from pathlib import Path

BUILDS = {"tiny-flux": "flux", "tiny-ovis": "ovis"}


def build_checkpoint(name: str, out_dir: Path) -> Path:
    from services.image.tiny_pipelines import build

    if name not in BUILDS:
        raise SystemExit(f"unknown build {name!r}; known: {', '.join(BUILDS)}")
    out_dir = Path(out_dir).resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(BUILDS[name]).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(BUILDS))
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = build_checkpoint(args.name, args.out_dir)
    print(f"built {args.name} in {time.perf_counter() - t0:.1f}s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
