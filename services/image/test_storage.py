from __future__ import annotations

import os
import time
from pathlib import Path

from services.image.storage import ImageStore, config_of


def test_save_fetch_expire(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "flux.1-dev", ttl_s=60)
    fid = store.save(b"\x89PNG-data")
    assert config_of(fid) == "flux.1-dev" and fid.endswith(".png")
    assert store.path(fid).read_bytes() == b"\x89PNG-data"
    old = time.time() - 120
    os.utime(tmp_path / fid, (old, old))
    assert store.path(fid) is None and not (tmp_path / fid).exists()


def test_rejects_foreign_names(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "tiny-flux")
    (tmp_path / "secret.txt").write_text("x")
    for bad in ("../secret.txt", "secret.txt", "tiny-flux.xyz.png", "tiny-flux." + "0" * 32 + ".png"):
        assert store.path(bad) is None
    assert config_of("nope") is None


def test_purge(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "c", ttl_s=10)
    fids = [store.save(b"x") for _ in range(3)]
    old = time.time() - 60
    os.utime(tmp_path / fids[0], (old, old))
    assert store.purge(force=True) == 1
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(fids[1:])
