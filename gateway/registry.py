"""Which configs run where, and which config a model name leads to.

The catalog says what *can* run; the backends file says what *does* run. The local runtime and the
compose scripts write that file (`GATEWAY_BACKENDS_FILE`); the gateway re-reads it when it changes,
so starting or stopping a config never needs a gateway restart:

    {"tiny-llm": [{"url": "http://127.0.0.1:41234", "admin_url": "http://127.0.0.1:41235"}]}
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.configs import Catalog, Config, Protocol, load_catalog
from gateway.configs.catalog import ROOT
from gateway.errors import BackendStopped, UnknownModel


def default_backends_file() -> Path:
    return Path(os.environ.get("GATEWAY_BACKENDS_FILE", ROOT / ".run" / "backends.json"))


@dataclass(frozen=True, slots=True)
class Backend:
    config: str
    url: str
    admin_url: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the config and the backend replica chosen for it."""

    config: Config
    backend: Backend


class Registry:
    # Re-reading the file costs a stat(); doing it at most this often keeps it off the hot path.
    RECHECK_S = 0.25

    def __init__(self, catalog: Catalog | None = None, backends_file: Path | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.backends_file = backends_file or default_backends_file()
        self._running: dict[str, list[Backend]] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self.inflight: dict[str, int] = {}  # url -> requests in flight through this gateway
        self._by_name = self._index(self.catalog)

    @staticmethod
    def _index(catalog: Catalog) -> dict[str, list[Config]]:
        by_name: dict[str, list[Config]] = {}
        for cfg in catalog:
            for n in cfg.model_names():
                for key in (n, n.lower()):
                    lst = by_name.setdefault(key, [])
                    if cfg not in lst:
                        lst.append(cfg)
        return by_name

    # ---- what runs ----
    def running(self) -> dict[str, list[Backend]]:
        now = time.monotonic()
        if now - self._checked >= self.RECHECK_S:
            self._checked = now
            self._reload()
        return self._running

    def _reload(self) -> None:
        try:
            mtime = self.backends_file.stat().st_mtime_ns
        except FileNotFoundError:
            self._running, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            raw = orjson.loads(self.backends_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return  # a half-written file: keep the last good view, look again next time
        self._mtime = mtime
        self._running = {
            name: [Backend(name, b["url"].rstrip("/"), (b.get("admin_url") or b["url"]).rstrip("/")) for b in lst]
            for name, lst in raw.items()
            if name in self.catalog.configs and isinstance(lst, list)
        }

    def set_running(self, running: dict[str, list[Backend]]) -> None:
        """For tests and embedders: replace the view (the file is not touched)."""
        self._running = running
        self._checked = float("inf")

    def running_configs(self, protocol: Protocol | None = None) -> list[Config]:
        cfgs = [self.catalog.configs[n] for n in self.running() if n in self.catalog.configs]
        return [c for c in cfgs if protocol is None or protocol in c.protocols]

    # ---- routing ----
    def configs_for(self, model: str) -> list[Config]:
        """Configs a model name may mean: served name, config name, alias; `name:latest` == `name`."""
        for candidate in (model, model.removesuffix(":latest"), model.lower(), model.lower().removesuffix(":latest")):
            if candidate in self._by_name:
                return self._by_name[candidate]
        return []

    def resolve(self, model: str, protocol: Protocol | None = None) -> Route:
        configs = [c for c in self.configs_for(model) if protocol is None or protocol in c.protocols]
        running = self.running()
        live = [(c, b) for c in configs for b in running.get(c.name, ())]
        if live:
            cfg, backend = min(live, key=lambda cb: self.inflight.get(cb[1].url, 0))
            return Route(cfg, backend)
        if configs:
            raise BackendStopped(model, configs[0].name)
        raise UnknownModel(model, self.available_models(protocol))

    def available_models(self, protocol: Protocol | None = None) -> list[str]:
        return sorted({c.model.served_name for c in self.running_configs(protocol)})

    def all_backends(self) -> Iterable[Backend]:
        for lst in self.running().values():
            yield from lst

    # ---- least-loaded bookkeeping (one gateway; shared state across replicas lives in the store) ----
    def begin(self, backend: Backend) -> None:
        self.inflight[backend.url] = self.inflight.get(backend.url, 0) + 1

    def end(self, backend: Backend) -> None:
        self.inflight[backend.url] = max(0, self.inflight.get(backend.url, 0) - 1)
