"""Models per task, each with its own lifecycle (lazy load, idle release, reload) and worker pool.

Tasks: ocr, clip_img, clip_txt, face. A task's pool holds N workers (OCR_WORKERS / CLIP_WORKERS /
FACE_WORKERS), each bound to its own inference requests, and N threads to run them: N requests
infer at once, the rest wait their turn (never rejected, never dropped).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.common.lifecycle import Lifecycle, State
from services.common.metrics import INFERENCE_SECONDS, QUEUE_CAPACITY, QUEUE_DEPTH
from services.vision import clip, face, ocr
from services.vision.backends import BackendSpec
from services.vision.settings import Settings

log = logging.getLogger("vision")
TASKS = ("ocr", "clip_img", "clip_txt", "face")
FAMILY = {"ocr": "ocr", "clip_img": "clip", "clip_txt": "clip", "face": "face"}


class ModelMissing(FileNotFoundError):
    """The task's model files are not installed; the message tells the operator where to put them."""


class TaskPool:
    def __init__(self, name: str, workers: list[Any]) -> None:
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for w in workers:
            self._free.put(w)
        self._executor = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix=f"vision-{name}")

    async def run(self, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, args)

    def _call(self, args: tuple[Any, ...]) -> Any:
        # As many threads as workers: a thread always finds a free worker here.
        w = self._free.get()
        try:
            return w(*args)
        finally:
            self._free.put(w)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        while not self._free.empty():
            self._free.get()


class Vision:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.lifecycles: dict[str, Lifecycle] = {}
        self._waiting: dict[str, int] = dict.fromkeys(TASKS, 0)
        for task in TASKS:
            self.lifecycles[task] = Lifecycle(
                f"{settings.config_name}:{task}",
                load=lambda t=task: asyncio.to_thread(self._build, t),
                unload=lambda t=task: asyncio.to_thread(self._release, t),
                idle_timeout_s=settings.idle_timeout_s,
            )
        self._pools: dict[str, TaskPool] = {}
        # What runs at once before requests wait: every task's inference workers together.
        QUEUE_CAPACITY.labels(settings.config_name).set(sum(settings.workers.values()))

    # ---- model files
    def spec(self, task: str) -> BackendSpec:
        fam = FAMILY[task]
        return BackendSpec(self.s.backend, self.s.devices[fam], self.s.precisions[fam], self.s.workers[fam],
                           self.s.ort_intra_threads, self.s.ov_hint(fam))

    def missing(self, task: str) -> str | None:
        """None when the task can load; otherwise a message naming the missing files."""
        if task == "ocr":
            try:
                files = list(ocr.model_files(self.s.ocr_model).values())
            except FileNotFoundError as e:
                return str(e)
        elif task in ("clip_img", "clip_txt"):
            cf = clip.clip_files(self.s.clip_dir, self.s.clip_model)
            files = [cf["img"]] if task == "clip_img" else [cf["txt"], cf["vocab"]]
        else:
            files = list(face.face_files(self.s.face_dir, self.s.face_model).values())
        absent = [str(p) for p in files if not p.is_file()]
        if not absent:
            return None
        what = {"ocr": "OCR", "clip_img": "CLIP", "clip_txt": "CLIP", "face": "face"}[task]
        return f"{what} model files are not installed: missing {', '.join(absent)} (set VISION_MODELS_DIR)"

    # ---- loading (runs in a worker thread)
    def _build(self, task: str) -> TaskPool:
        msg = self.missing(task)
        if msg:
            raise ModelMissing(msg)
        t0 = time.monotonic()
        n = self.s.workers[FAMILY[task]]
        spec = self.spec(task)
        workers: list[Callable[..., Any]]
        if task == "ocr":
            models = ocr.OcrModels(self.s.ocr_model, spec, self.s.ocr_rec_dynamic_width)
            workers = [models.worker() for _ in range(n)]
        elif task == "clip_img":
            m = clip.load_image_model(clip.clip_files(self.s.clip_dir, self.s.clip_model), spec)
            workers = [clip.ClipImageWorker(m, self.s.clip_swap_red_blue) for _ in range(n)]
        elif task == "clip_txt":
            m, tok = clip.load_text_model(clip.clip_files(self.s.clip_dir, self.s.clip_model), spec)
            workers = [clip.ClipTextWorker(m, tok) for _ in range(n)]
        else:
            fm = face.FaceModels(face.face_files(self.s.face_dir, self.s.face_model), spec, self.s.detection_thresh)
            workers = [fm.worker() for _ in range(n)]
        pool = TaskPool(task, workers)
        self._pools[task] = pool
        log.info("%s loaded on %s/%s with %d workers in %.2fs", task, spec.backend, spec.device, n,
                 time.monotonic() - t0)
        return pool

    def _release(self, task: str) -> None:
        pool = self._pools.pop(task, None)
        if pool:
            pool.close()
        gc.collect()  # drop the compiled models now: releasing memory is the point of an unload
        log.info("%s released", task)

    # ---- inference
    async def run(self, task: str, *args: Any) -> Any:
        lc = self.lifecycles[task]
        gauge = QUEUE_DEPTH.labels(self.s.config_name)
        gauge.inc()
        try:
            async with lc.use() as pool:
                t0 = time.monotonic()
                out = await pool.run(*args)
                INFERENCE_SECONDS.labels(self.s.config_name, task).observe(time.monotonic() - t0)
                return out
        finally:
            gauge.dec()

    async def restart(self) -> None:
        """/restart_v2: release every loaded model and load it again. Each unload waits for that
        task's in-flight requests; requests arriving meanwhile wait for the reload (none dropped)."""
        for task, lc in self.lifecycles.items():
            if lc.state in (State.ready, State.loading):
                try:
                    await lc.reload()
                except Exception:
                    log.exception("reloading %s failed; it will load again on the next request", task)

    async def close(self) -> None:
        for lc in self.lifecycles.values():
            await lc.unload()


class LifecycleGroup:
    """The four task lifecycles seen as one by the shared admin API and metrics."""

    def __init__(self, vision: Vision) -> None:
        self.v = vision
        self.name = vision.s.config_name

    @property
    def members(self) -> dict[str, Lifecycle]:
        return self.v.lifecycles

    @property
    def state(self) -> State:
        states = {lc.state for lc in self.members.values()}
        for s in (State.loading, State.unloading, State.ready):
            if s in states:
                return s
        return State.unloaded

    @property
    def idle_timeout_s(self) -> float:
        return self.v.s.idle_timeout_s

    def on_event(self, fn: Callable[[str, float], None]) -> None:
        for lc in self.members.values():
            lc.on_event(fn)

    async def load(self) -> None:
        """Load every task whose files are installed (an explicit warm-up)."""
        for task, lc in self.members.items():
            if self.v.missing(task) is None:
                await lc.load()

    async def unload(self) -> bool:
        results = [await lc.unload() for lc in self.members.values()]
        return any(results)

    def set_idle_timeout(self, seconds: float) -> None:
        for lc in self.members.values():
            lc.set_idle_timeout(seconds)

    def snapshot(self) -> dict[str, Any]:
        tasks = {t: lc.snapshot() for t, lc in self.members.items()}
        return {
            "name": self.name,
            "state": self.state.value,
            "idle_timeout_s": next(iter(tasks.values()))["idle_timeout_s"],
            "in_use": sum(t["in_use"] for t in tasks.values()),
            "loads": sum(t["loads"] for t in tasks.values()),
            "unloads": sum(t["unloads"] for t in tasks.values()),
            "load_failures": sum(t["load_failures"] for t in tasks.values()),
            "tasks": tasks,
        }
