"""`python -m services.llm --config NAME [--host H] [--port P] [--admin-port A] [--preload]`

vLLM on --port (its own OpenAI server, started on demand), the shared admin API on --admin-port.
LLM_LIFECYCLE=off execs vLLM directly instead (services/llm/entrypoint.py: no admin API, no unload).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from services.llm.argv import UNLOAD_MODES


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m services.llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=env("CONFIG_NAME"), help="config name (env CONFIG_NAME)")
    p.add_argument("--host", default=env("HOST", "127.0.0.1"), help="vLLM and admin bind address")
    p.add_argument("--port", type=int, default=int(env("PORT", "0")) or None,
                   help="vLLM's port (env PORT); default the config's (8000)")
    p.add_argument("--admin-port", type=int, default=int(env("ADMIN_PORT", "0")) or None,
                   help="admin API port (env ADMIN_PORT); default --port + 1")
    p.add_argument("--preload", action="store_true", help="load at start instead of on first /admin/load")
    p.add_argument("--unload-mode", choices=UNLOAD_MODES, default=env("LLM_UNLOAD_MODE", "stop"),
                   help="stop: end the vLLM process; sleep: vLLM sleep mode (GPU only)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="seconds; default env IDLE_TIMEOUT_S, else the config's idle_timeout_s (0 = never)")
    p.add_argument("--poll-interval", type=float, default=float(env("LLM_ACTIVITY_POLL_S", "2")),
                   help="seconds between reads of vLLM's /metrics for the idle timer")
    p.add_argument("--start-timeout", type=float, default=float(env("LLM_START_TIMEOUT_S", "900")))
    p.add_argument("--run-dir", type=Path, default=Path(env("LLM_RUN_DIR")) if env("LLM_RUN_DIR") else None,
                   help="per-run TMPDIRs and the vLLM cache; default a temp dir removed at exit")
    p.add_argument("--log-file", type=Path, default=None, help="also append vLLM's output here")
    a = p.parse_args(argv)
    if not a.config:
        p.error("--config NAME (or env CONFIG_NAME) is required")
    if a.idle_timeout is None and env("IDLE_TIMEOUT_S"):
        a.idle_timeout = float(env("IDLE_TIMEOUT_S", "0"))
    return a


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("LLM_LIFECYCLE", "on").lower() in ("off", "0", "false", "no"):
        from services.llm import entrypoint

        return entrypoint.main(argv)  # it ignores the supervisor-only flags
    a = parse(argv)

    import uvicorn

    from gateway.configs import load_catalog
    from services.llm.supervisor import LLMService, create_app

    cfg = load_catalog().require(a.config)
    port = a.port or cfg.port
    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix=f"modelplat-llm-{cfg.name}-"))
    svc = LLMService(cfg, a.host, port, run_dir, unload_mode=a.unload_mode, log_file=a.log_file,
                     poll_interval_s=a.poll_interval, idle_timeout_s=a.idle_timeout,
                     start_timeout_s=a.start_timeout)
    svc.remove_run_dir = a.run_dir is None
    app = create_app(svc, preload=a.preload)
    print(f"[llm] {cfg.name}: admin on http://{a.host}:{a.admin_port or port + 1}, vLLM on {svc.base_url} "
          f"(lazy; unload mode {a.unload_mode}, idle timeout {svc.lc.idle_timeout_s:g}s)", flush=True)
    uvicorn.run(app, host=a.host, port=a.admin_port or port + 1, log_level="warning", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
