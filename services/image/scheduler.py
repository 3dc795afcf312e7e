"""A bounded queue in front of the one pipeline, with batching of compatible requests.

One worker runs one pipeline call at a time (the GPU is the bottleneck; two concurrent calls would only
share it). Requests beyond `capacity` waiting get QueueFull (HTTP 429 + Retry-After). The worker takes the
oldest request plus any waiting ones with the same batch key (size, steps, guidance, negative prompt),
up to `max_batch` images: batching is off (max_batch 1) unless measured faster on the device; FLUX at
1024px on an H100 is compute bound and bs2 costs 2x bs1. Requests that arrive during a model load simply
wait in the queue: the worker's `lifecycle.use()` is what triggers and awaits the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.lifecycle import Lifecycle
from services.image.errors import QueueFull
from services.image.jobs import Job, Result

log = logging.getLogger("image.scheduler")


@dataclass
class _Pending:
    job: Job
    future: asyncio.Future[Result] = field(repr=False)


class Scheduler:
    def __init__(self, lc: Lifecycle, capacity: int, max_batch: int = 1,
                 on_batch: Callable[[list[Job], list[Result]], None] | None = None) -> None:
        self.lc = lc
        self.capacity = capacity
        self.max_batch = max(1, max_batch)
        self.waiting: list[_Pending] = []
        self.running = 0
        self.avg_request_s = 5.0  # refined by every batch; only used for Retry-After
        self._on_batch = on_batch
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self.waiting) + self.running

    def retry_after(self) -> int:
        ahead = len(self.waiting) + self.running
        return max(1, min(600, math.ceil(self.avg_request_s * ahead / self.max_batch)))

    async def submit(self, job: Job) -> Result:
        if len(self.waiting) >= self.capacity:
            raise QueueFull(self.retry_after(), self.capacity)
        pending = _Pending(job, asyncio.get_running_loop().create_future())
        self.waiting.append(pending)
        self._ensure_worker()
        self._wake.set()
        try:
            return await pending.future
        finally:
            # a client that went away frees its place (a running batch still finishes)
            with contextlib.suppress(ValueError):
                self.waiting.remove(pending)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- worker ----
    def _ensure_worker(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work())

    def _take_batch(self) -> list[_Pending]:
        head = self.waiting.pop(0)
        batch, images = [head], head.job.n
        for p in list(self.waiting):
            if images >= self.max_batch:
                break
            if p.job.batch_key == head.job.batch_key and images + p.job.n <= self.max_batch:
                self.waiting.remove(p)
                batch.append(p)
                images += p.job.n
        return batch

    async def _work(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [p for p in self._take_batch() if not p.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        self.running = len(batch)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with self.lc.use() as engine:
                results = await asyncio.to_thread(engine.generate, [p.job for p in batch])
        except Exception as e:  # load or generation failed: every request of the batch gets the error
            log.exception("batch of %d failed", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            self.running = 0
        self.avg_request_s = 0.7 * self.avg_request_s + 0.3 * (loop.time() - t0)
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)
        if self._on_batch:
            self._on_batch([p.job for p in batch], results)
