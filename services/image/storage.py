"""PNG files behind `url` results and the simple API's /outputs/, deleted after `ttl_s`.

File ids carry the config name (`<config>.<32 hex>.png`) so the gateway can route
GET /v1/images/files/{id} to the right service without any shared state.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

ID_RE = re.compile(r"^(?P<config>[a-z0-9][a-z0-9._-]*)\.(?P<uid>[0-9a-f]{32})\.png$")


def config_of(file_id: str) -> str | None:
    m = ID_RE.match(file_id)
    return m.group("config") if m else None


class ImageStore:
    PURGE_EVERY_S = 60.0

    def __init__(self, root: Path, config: str, ttl_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.config = config
        self.ttl_s = ttl_s
        self.root.mkdir(parents=True, exist_ok=True)
        self._last_purge = 0.0

    def save(self, png: bytes) -> str:
        file_id = f"{self.config}.{uuid.uuid4().hex}.png"
        tmp = self.root / f".{file_id}.tmp"
        tmp.write_bytes(png)
        tmp.rename(self.root / file_id)  # readers never see a partial file
        self.purge()
        return file_id

    def path(self, file_id: str) -> Path | None:
        """The file, or None when the id is malformed, unknown or expired (expired files are removed)."""
        if not ID_RE.match(file_id):
            return None
        p = self.root / file_id
        try:
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > self.ttl_s:
            p.unlink(missing_ok=True)
            return None
        return p

    def purge(self, force: bool = False) -> int:
        now = time.time()
        if not force and now - self._last_purge < self.PURGE_EVERY_S:
            return 0
        self._last_purge = now
        removed = 0
        for p in self.root.glob("*.png"):
            try:
                if now - p.stat().st_mtime > self.ttl_s:
                    p.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
