"""Optional API keys: who is calling, as a key id that is safe to log, count and store.

Keys come from `GATEWAY_API_KEYS` (comma list) and/or `GATEWAY_API_KEYS_FILE` (one key a line, re-read
when the file changes, so keys rotate without a restart). A file line may carry per-key limits:

    sk-alice-0123  name=alice rpm=120 tpm=200000 streams=8
    # comments and blank lines are ignored

With no keys configured the gateway is open and every caller is the key id `anonymous`.
Clients send `Authorization: Bearer KEY` (OpenAI, Ollama) or `api-key: KEY` (MT Photos; accepted on
every protocol). A key is never logged, stored or put in a metric: only its id, a short SHA-256 prefix.

MT Photos compatibility: its app sends the key configured in MT Photos (`API_AUTH_KEY` on the vision
service). When the gateway's environment sets `API_AUTH_KEY` too, that value is accepted on the MT
Photos routes, so an existing MT Photos setup keeps working with gateway keys switched on. A caller
that authenticated with a gateway key has its `api-key` header replaced by the service's key before
forwarding (see `mtphotos_service_key`), so the vision service never needs to know gateway keys.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import Unauthorized

log = logging.getLogger("gateway.auth")

MTPHOTOS_DEFAULT_KEY = "mt_photos_ai_extra"  # the vision service's default API_AUTH_KEY


@dataclass(frozen=True, slots=True)
class Caller:
    id: str  # key id: 12 hex digits of SHA-256(key), or "anonymous" / "mtphotos"
    name: str = ""
    rpm: int | None = None  # per-key overrides of the global limits (None = the global one)
    tpm: int | None = None
    streams: int | None = None
    gateway_key: bool = False  # authenticated with a gateway key (not MT Photos' own)


ANONYMOUS = Caller("anonymous")
CURRENT: contextvars.ContextVar[Caller] = contextvars.ContextVar("modelplat_caller", default=ANONYMOUS)


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_line(line: str) -> tuple[str, Caller] | None:
    parts = line.split("#", 1)[0].split()
    if not parts:
        return None
    key, opts = parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)

    def num(name: str) -> int | None:
        try:
            return int(opts[name]) if name in opts else None
        except ValueError:
            log.warning("keys file: ignoring %s=%r for key %s (not an integer)", name, opts[name], key_id(key))
            return None

    kid = key_id(key)
    return key, Caller(kid, opts.get("name", kid), num("rpm"), num("tpm"), num("streams"), gateway_key=True)


class Keys:
    """The configured keys, looked up by digest (no key text is kept in a comparable form)."""

    RECHECK_S = 1.0

    def __init__(self, keys: str | None = None, keys_file: str | None = None, mtphotos_key: str | None = None) -> None:
        self.inline = os.environ.get("GATEWAY_API_KEYS", "") if keys is None else keys
        file = os.environ.get("GATEWAY_API_KEYS_FILE", "") if keys_file is None else keys_file
        self.file = Path(file) if file else None
        mt = os.environ.get("API_AUTH_KEY", "") if mtphotos_key is None else mtphotos_key
        self.mtphotos = _digest(mt) if mt else None
        self.mtphotos_service_key = mt or MTPHOTOS_DEFAULT_KEY
        self._by_digest: dict[bytes, Caller] = {}
        self._mtime: int | None = None
        self._checked = 0.0
        self._load()

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest) or self.file is not None

    def _load(self) -> None:
        lines = [k for k in self.inline.split(",") if k.strip()]
        if self.file is not None:
            try:
                self._mtime = self.file.stat().st_mtime_ns
                lines += self.file.read_text().splitlines()
            except OSError as e:
                # A configured but unreadable file must not open the gateway: keep the old keys.
                log.error("cannot read GATEWAY_API_KEYS_FILE %s: %s", self.file, e.strerror)
                if self._by_digest:
                    return
        parsed = [p for p in map(parse_line, lines) if p]
        self._by_digest = {_digest(k): c for k, c in parsed}
        log.info("api keys: %d configured", len(self._by_digest))

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.file is None or now - self._checked < self.RECHECK_S:
            return
        self._checked = now
        try:
            mtime = self.file.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._load()

    def check(self, presented: str | None, mtphotos: bool = False) -> Caller:
        """The caller for this key, or Unauthorized. With no keys configured, everyone is anonymous."""
        self._maybe_reload()
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise Unauthorized("Missing API key: send it as 'Authorization: Bearer KEY' (or the 'api-key' header).")
        digest = _digest(presented)
        found = self._by_digest.get(digest)
        if found is not None:
            return found
        if mtphotos and self.mtphotos is not None and digest == self.mtphotos:
            return Caller("mtphotos", "mtphotos")
        raise Unauthorized("Invalid API key.")


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer` or `api-key`, from raw ASGI headers (lower-case names)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"api-key":
            api_key = value.decode("latin-1").strip()
    return api_key


def with_service_key(headers: list[tuple[bytes, bytes]], service_key: str) -> list[tuple[bytes, bytes]]:
    """Headers for an MT Photos request: the vision service's own key instead of the gateway key."""
    kept = [(n, v) for n, v in headers if n not in (b"api-key", b"authorization")]
    return [*kept, (b"api-key", service_key.encode("latin-1"))]
