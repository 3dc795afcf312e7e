"""One `vllm serve` child process: spawn in its own process group, wait for /health, stop the whole group.

The supervisor never imports vLLM or torch: it stays a ~60 MB process while vLLM (API server, engine
core, worker) comes and goes. Each start gets a fresh TMPDIR (vLLM leaves IPC sockets and
`vllm_dist_*` there even after a clean stop) which is deleted after the stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TAIL_LINES = 60



# vLLM binds unix sockets at $TMPDIR/<uuid4> (36 characters) and a socket path must fit in 107 bytes.
MAX_TMPDIR_LEN = 107 - 37 - 8


def socket_safe_tmpdir(preferred: Path) -> Path:
    """A fresh per-run TMPDIR: `preferred` when its path is short enough for vLLM's sockets, else a short
    folder under /tmp (a deep run dir, such as a pytest temp folder, would make vLLM fail to start)."""
    if len(str(preferred)) <= MAX_TMPDIR_LEN:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="vllm-", dir="/tmp"))

class VLLMStartError(RuntimeError):
    """vLLM died or never became healthy; the message carries the end of its log."""


def _die_with_parent() -> None:
    # If the supervisor is SIGKILLed, the kernel sends vLLM a SIGTERM instead of leaving an orphan
    # that holds the port and the GPU memory.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def vllm_executable() -> str:
    """`vllm` from the supervisor's own environment first (the venv's bin is often not on PATH)."""
    here = Path(sys.executable).with_name("vllm")
    return str(here) if here.exists() else (shutil.which("vllm") or "vllm")


class VLLMProcess:
    def __init__(self, argv: list[str], env: dict[str, str], health_url: str, run_dir: Path,
                 log_file: Path | None = None, start_timeout_s: float = 900) -> None:
        self.argv = [vllm_executable(), *argv[1:]] if argv and argv[0] == "vllm" else argv
        self.env = env
        self.health_url = health_url
        self.run_dir = run_dir
        self.log_file = log_file
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: asyncio.Task[None] | None = None
        self._tmp: Path | None = None
        self._runs = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    async def start(self) -> float:
        """Spawn and wait until /health answers 200; returns the seconds it took."""
        t0 = time.monotonic()
        self._runs += 1
        self._tmp = socket_safe_tmpdir(self.run_dir / f"tmp-{self._runs}")
        env = {**os.environ, **self.env, "TMPDIR": str(self._tmp), "PYTHONUNBUFFERED": "1"}
        env.setdefault("VLLM_CACHE_ROOT", str(self.run_dir / "vllm-cache"))
        self.tail.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self._reader = asyncio.create_task(self._pump(self.proc))
        try:
            await self._wait_healthy(self.proc)
        except BaseException:
            await self.stop()
            raise
        return time.monotonic() - t0

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Copy vLLM's output to our stdout (and the log file), keeping the tail for error messages."""
        assert proc.stdout is not None
        log = self.log_file.open("ab") if self.log_file else None
        try:
            async for line in proc.stdout:
                self.tail.append(line.decode(errors="replace").rstrip())
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                if log:
                    log.write(line)
                    log.flush()
        finally:
            if log:
                log.close()

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while True:
                if proc.returncode is not None:
                    if self._reader:  # let the pump catch the crash's last lines first
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(self._reader), 2)
                    raise VLLMStartError(self._failure(f"vllm serve exited with code {proc.returncode}"))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(self.health_url) as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise VLLMStartError(self._failure(f"vllm serve not healthy after {self.start_timeout_s:g}s"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.5)

    def tail_text(self, n: int = 25) -> str:
        return "\n".join(list(self.tail)[-n:])

    def _failure(self, what: str) -> str:
        return f"{what}; last log lines:\n{self.tail_text()}"

    async def stop(self, term_timeout_s: float = 30) -> float:
        """SIGTERM the process group, SIGKILL what is left after term_timeout_s; returns seconds taken."""
        t0 = time.monotonic()
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the leader's pid
            _signal_group(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), term_timeout_s)
            except TimeoutError:
                _signal_group(pgid, signal.SIGKILL)
                await proc.wait()
            await _reap_group(pgid, term_timeout_s)
            if self._reader:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._reader, 5)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return time.monotonic() - t0


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def _reap_group(pgid: int, timeout_s: float) -> None:
    """The leader may exit before its children (engine core, workers): wait for the group to empty."""
    deadline = time.monotonic() + timeout_s
    killed = False
    while _signal_group(pgid, 0):
        # As PID 1 in a container we inherit the orphans: reap their zombies or the group never empties.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)
        if time.monotonic() > deadline:
            if killed:
                print(f"[llm] process group {pgid} still not empty after SIGKILL", file=sys.stderr)
                return
            _signal_group(pgid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5
        await asyncio.sleep(0.2)
