"""The model lifecycle every service shares: unloaded -> loading -> ready -> unloading -> unloaded.

A service hands this class two callables (load and unload). The class guarantees:
- lazy load: `acquire()` loads on first use; concurrent callers wait for the same load;
- idle unload: after `idle_timeout_s` without use (0 = never) the model is unloaded;
- reload on demand: the next `acquire()` after an unload loads again;
- no request is dropped: an unload waits until in-flight users are done, and a load that fails
  wakes every waiter with the error (the next caller tries again).
It has no I/O of its own and uses only asyncio, so it is unit-tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class State(enum.StrEnum):
    unloaded = "unloaded"
    loading = "loading"
    ready = "ready"
    unloading = "unloading"


@dataclass
class Stats:
    loads: int = 0
    unloads: int = 0
    load_failures: int = 0
    last_load_s: float = 0.0
    last_unload_s: float = 0.0
    loaded_at: float | None = None
    last_used: float | None = None
    listeners: list[Callable[[str, float], None]] = field(default_factory=list)


class Lifecycle:
    def __init__(
        self,
        name: str,
        load: Callable[[], Awaitable[Any]],
        unload: Callable[[], Awaitable[None]],
        idle_timeout_s: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._load = load
        self._unload = unload
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self.state = State.unloaded
        self.stats = Stats()
        self.model: Any = None
        self._cond = asyncio.Condition()
        self._in_use = 0
        self._error: BaseException | None = None
        self._idle_task: asyncio.Task[None] | None = None

    # ---- observers (metrics) ----
    def on_event(self, fn: Callable[[str, float], None]) -> None:
        """fn(event, seconds) for event in load, unload, load_failed; used for metrics."""
        self.stats.listeners.append(fn)

    def _emit(self, event: str, seconds: float) -> None:
        for fn in self.stats.listeners:
            fn(event, seconds)

    # ---- the public API ----
    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """`async with lifecycle.use() as model:` loads if needed and keeps the model loaded while held."""
        model = await self.acquire()
        try:
            yield model
        finally:
            await self.release()

    async def acquire(self) -> Any:
        async with self._cond:
            while True:
                if self.state == State.ready:
                    self._in_use += 1
                    self.stats.last_used = self._clock()
                    return self.model
                if self.state == State.unloaded:
                    await self._do_load()
                    continue
                # loading or unloading: wait for the transition to finish, then look again
                await self._cond.wait()

    async def release(self) -> None:
        async with self._cond:
            self._in_use -= 1
            self.stats.last_used = self._clock()
            self._cond.notify_all()
        self._arm_idle_timer()

    async def load(self) -> None:
        """Load now (an explicit warm-up or reload); returns when ready."""
        await self.acquire()
        await self.release()

    async def unload(self) -> bool:
        """Unload once in-flight users are done; False if it was not loaded."""
        async with self._cond:
            while self.state in (State.loading, State.unloading):
                await self._cond.wait()
            if self.state != State.ready:
                return False
            while self._in_use:
                await self._cond.wait()
            if self.state != State.ready:
                return False
            await self._do_unload()
            return True

    async def reload(self) -> None:
        await self.unload()
        await self.load()

    def set_idle_timeout(self, seconds: float) -> None:
        self.idle_timeout_s = max(0.0, float(seconds))
        self._arm_idle_timer()

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        s = self.stats
        return {
            "name": self.name,
            "state": self.state.value,
            "idle_timeout_s": self.idle_timeout_s,
            "in_use": self._in_use,
            "loads": s.loads,
            "unloads": s.unloads,
            "load_failures": s.load_failures,
            "last_load_s": round(s.last_load_s, 3),
            "idle_s": None if s.last_used is None else round(now - s.last_used, 3),
            "expires_in_s": self._expires_in(now),
        }

    # ---- internals (called with the condition held) ----
    async def _do_load(self) -> None:
        self.state = State.loading
        self._cond.notify_all()
        t0 = self._clock()
        try:
            # The load itself runs without the lock so that snapshot() and waiters stay responsive.
            self._cond.release()
            try:
                model = await self._load()
            finally:
                await self._cond.acquire()
        except BaseException:
            self.state = State.unloaded
            self.stats.load_failures += 1
            self._emit("load_failed", self._clock() - t0)
            self._cond.notify_all()
            raise
        self.model = model
        self.state = State.ready
        self.stats.loads += 1
        self.stats.last_load_s = self._clock() - t0
        self.stats.loaded_at = self._clock()
        self.stats.last_used = self._clock()
        self._emit("load", self.stats.last_load_s)
        self._cond.notify_all()

    async def _do_unload(self) -> None:
        self.state = State.unloading
        self._cond.notify_all()
        t0 = self._clock()
        self._cond.release()
        try:
            await self._unload()
        finally:
            await self._cond.acquire()
            self.model = None
            self.state = State.unloaded
            self.stats.unloads += 1
            self.stats.last_unload_s = self._clock() - t0
            self._emit("unload", self.stats.last_unload_s)
            self._cond.notify_all()

    def _expires_in(self, now: float) -> float | None:
        if self.state != State.ready or not self.idle_timeout_s or self._in_use:
            return None
        last = self.stats.last_used or now
        return round(max(0.0, last + self.idle_timeout_s - now), 3)

    def _arm_idle_timer(self) -> None:
        if self._idle_task and not self._idle_task.done():
            self._idle_task.cancel()
        if self.idle_timeout_s and self.state == State.ready:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_watch())

    async def _idle_watch(self) -> None:
        while True:
            remaining = self._expires_in(self._clock())
            if remaining is None:
                return
            if remaining <= 0:
                async with self._cond:
                    still_idle = (
                        self.state == State.ready and not self._in_use and self._expires_in(self._clock()) == 0
                    )
                    if still_idle:
                        await self._do_unload()
                return
            await asyncio.sleep(remaining)
