"""The lifecycle for vLLM: the shared admin API on its own port, `vllm serve` as a child on the data port.

Data path: the gateway talks to vLLM's own OpenAI server on --port directly (no proxy hop).
Control path (this process, --admin-port): /admin/load spawns vLLM and waits for /health,
/admin/unload stops it (or puts it to sleep), /admin/idle-timeout, /healthz, /metrics.

unload modes:
  stop   (default) SIGTERM the vLLM process group; frees all RAM/VRAM; the next load is a cold start.
  sleep  GPU only: vLLM's sleep mode (--enable-sleep-mode, VLLM_SERVER_DEV_MODE=1): /sleep offloads
         weights and drops the KV cache, /wake_up restores them in seconds. vLLM does not support sleep
         mode on CPU, so this path is validated statically (command line, env), not run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.configs.schema import Config
from services.common.admin import admin_router
from services.common.lifecycle import Lifecycle, State
from services.common.metrics import QUEUE_DEPTH, track_lifecycle
from services.llm.activity import Activity, parse_activity
from services.llm.argv import resolve_checkpoint, vllm_argv, vllm_env
from services.llm.process import VLLMProcess, VLLMStartError

ROOT = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    return Path(os.environ.get("MODELS_DIR") or ROOT / ".run" / "models")


class LLMService:
    def __init__(self, cfg: Config, host: str, port: int, run_dir: Path, *, unload_mode: str = "stop",
                 log_file: Path | None = None, poll_interval_s: float = 2.0, idle_timeout_s: float | None = None,
                 start_timeout_s: float = 900) -> None:
        self.cfg = cfg
        self.unload_mode = unload_mode
        self.poll_interval_s = poll_interval_s
        self.model_path = resolve_checkpoint(cfg, models_dir())
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.base_url = f"http://{local}:{port}"
        argv = vllm_argv(cfg, host, port, self.model_path, unload_mode=unload_mode)
        env = vllm_env(cfg, self.model_path, unload_mode=unload_mode)
        self.proc = VLLMProcess(argv, env, self.base_url + "/health", run_dir, log_file, start_timeout_s)
        idle = cfg.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        self.lc = Lifecycle(cfg.name, self._load, self._unload, idle_timeout_s=idle, clock=time.monotonic)
        self.info: dict[str, Any] = {"engine": "vllm", "config": cfg.name, "url": self.base_url,
                                     "unload_mode": unload_mode, "vllm_pid": None}
        self._sleeping = False
        self._holding = False
        self.remove_run_dir = False

    # ---- lifecycle callbacks ----
    async def _load(self) -> str:
        if self._sleeping and self.proc.pid:
            await self._post("/wake_up")
            self._sleeping = False
            return self.model_path
        await self._ensure_checkpoint()
        await self.proc.start()
        self.info["vllm_pid"] = self.proc.pid
        return self.model_path

    async def _unload(self) -> None:
        if self.unload_mode == "sleep" and self.proc.pid:
            await self._post("/sleep?level=1")
            self._sleeping = True
            return
        await self.shutdown()

    async def shutdown(self) -> None:
        await self.proc.stop()
        self._sleeping = False
        self.info["vllm_pid"] = None

    async def _post(self, path: str) -> None:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.post(self.base_url + path) as r:
            if r.status >= 400:
                raise VLLMStartError(f"vLLM {path} answered {r.status}: {(await r.text())[:500]}")

    async def _ensure_checkpoint(self) -> None:
        """Build a dev/test checkpoint on first use, in a child process (torch stays out of this one)."""
        path = Path(self.model_path)
        if not self.cfg.model.build or path.exists():
            return
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.llm.build", self.cfg.model.build, str(path), cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        )
        out, _ = await p.communicate()
        if p.returncode:
            tail = out.decode(errors="replace")[-2000:]
            raise VLLMStartError(f"building {self.cfg.model.build!r} into {path} failed:\n{tail}")

    # ---- activity: vLLM's own metrics stand in for requests we never see ----
    async def watch_activity(self) -> None:
        before: Activity | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while True:
                await asyncio.sleep(self.poll_interval_s)
                if self.lc.state != State.ready or self._sleeping:
                    before = None
                    continue
                if self.proc.pid is None:
                    await self._crashed()
                    before = None
                    continue
                try:
                    async with s.get(self.base_url + "/metrics") as r:
                        now = parse_activity(await r.text())
                except (TimeoutError, aiohttp.ClientError):
                    continue
                QUEUE_DEPTH.labels(self.cfg.name).set(now.busy)
                await self._account(now, before)
                before = now

    async def _account(self, now: Activity, before: Activity | None) -> None:
        if now.busy and not self._holding and self.lc.state == State.ready:
            # Hold a use while requests are in flight: an unload (keep_alive 0, idle) waits for them.
            await self.lc.acquire()
            self._holding = True
        elif not now.busy and self._holding:
            self._holding = False
            await self.lc.release()
        elif now.used_since(before) and self.lc.state == State.ready:
            self.lc.stats.last_used = time.monotonic()
            self.lc.set_idle_timeout(self.lc.idle_timeout_s)  # re-arms the idle timer from last_used

    async def _crashed(self) -> None:
        print(f"[llm] vllm serve exited unexpectedly; last lines:\n{self.proc.tail_text()}", file=sys.stderr)
        if self._holding:
            self._holding = False
            await self.lc.release()
        await self.lc.unload()


def create_app(svc: LLMService, preload: bool = False) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(svc.watch_activity())
        loader = asyncio.create_task(svc.lc.load()) if preload else None
        try:
            yield
        finally:
            for t in (watcher, loader):
                if t:
                    t.cancel()
            await svc.shutdown()
            if svc.remove_run_dir:  # here, not after uvicorn.run(): uvicorn re-raises SIGTERM on exit
                shutil.rmtree(svc.proc.run_dir, ignore_errors=True)

    app = FastAPI(title=f"modelplat llm supervisor ({svc.cfg.name})", lifespan=lifespan)
    track_lifecycle(svc.lc, svc.cfg.name)
    app.include_router(admin_router(svc.lc, svc.info))

    @app.exception_handler(VLLMStartError)
    async def load_failed(request: Request, exc: VLLMStartError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "state": svc.lc.state.value}, status_code=503)

    return app
