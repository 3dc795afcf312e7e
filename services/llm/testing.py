"""Start a real LLM service (supervisor + lazily started `vllm serve`) from tests. Stdlib only, so the
gateway's test environment can import it while the service itself runs in `.venvs/llm`.

    h = start_llm_service("tiny-llm", models_dir, tmp_path)   # returns once the admin API answers
    h.admin("POST", "/admin/load")                           # vLLM is up on h.url afterwards
    ...
    h.stop()                                                 # SIGTERM; leaves no process behind
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_python() -> str:
    return os.environ.get("LLM_PYTHON") or str(ROOT / ".venvs" / "llm" / "bin" / "python")


@dataclass
class LLMServiceHandle:
    name: str
    url: str  # vLLM's OpenAI server (data path); base_url for the openai SDK is url + "/v1"
    admin_url: str  # the supervisor: /healthz, /admin/*, /metrics
    proc: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} -> {e.code}: {e.read().decode(errors='replace')}") from None
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def state(self) -> str:
        return self.admin("GET", "/admin/lifecycle")["state"]

    def wait_state(self, state: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.admin("GET", "/admin/lifecycle")
            if snap["state"] == state:
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: still {snap['state']!r}, wanted {state!r}; log {self.log_path}")
            time.sleep(0.5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM the supervisor (it stops vLLM); SIGKILL its group if it hangs."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # vLLM gets SIGTERM via PR_SET_PDEATHSIG
                self.proc.wait(10)


def start_llm_service(name: str, models_dir: Path, tmp: Path, *, extra_args: list[str] | None = None,
                      env: dict[str, str] | None = None, timeout: float = 120) -> LLMServiceHandle:
    """Start `python -m services.llm --config NAME` on free loopback ports; vLLM itself is not started yet."""
    tmp.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    log_path = tmp / f"{name}-llm.log"
    cmd = [llm_python(), "-m", "services.llm", "--config", name, "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin_port), "--run-dir", str(tmp / f"{name}-run"), *(extra_args or [])]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1",
                **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    h = LLMServiceHandle(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llm service {name} exited with {proc.returncode}:\n{h.log_tail()}")
        try:
            h.admin("GET", "/healthz", timeout=2)
            return h
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            h.stop()
            raise TimeoutError(f"llm service {name}: admin API not up after {timeout:g}s:\n{h.log_tail()}")
        time.sleep(0.3)


if __name__ == "__main__":  # manual use: python -m services.llm.testing tiny-llm
    import tempfile

    t = Path(tempfile.mkdtemp(prefix="llm-testing-"))
    handle = start_llm_service(sys.argv[1], t / "models", t)
    print(handle)
    handle.stop()
