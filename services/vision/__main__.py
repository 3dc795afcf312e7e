"""`python -m services.vision --config NAME [--host H] [--port P] [--workers N]`

The MT Photos AI service (OCR, CLIP, face) on OpenVINO or ONNX Runtime; the shared admin API is on
the same port. Models load lazily on first use. Port: --port, else HTTP_PORT, else the config's (8060).
"""

from __future__ import annotations

import argparse
import logging
import os


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m services.vision", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=env("CONFIG_NAME"), help="config name (env CONFIG_NAME)")
    p.add_argument("--host", default=env("HOST", "127.0.0.1"), help="bind address ('::' for IPv4+IPv6)")
    p.add_argument("--port", type=int, default=None, help="default: HTTP_PORT, else the config's port")
    p.add_argument("--workers", type=int, default=None, help="server processes (default WEB_CONCURRENCY)")
    a = p.parse_args(argv)
    if not a.config:
        p.error("--config NAME (or env CONFIG_NAME) is required")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import uvicorn

    from gateway.configs import load_catalog
    from services.vision.settings import SettingsError, from_config

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="[vision] %(message)s")
    cfg = load_catalog().require(a.config)
    try:
        s = from_config(cfg)
    except SettingsError as e:
        raise SystemExit(f"[vision] {cfg.name}: {e}") from None
    port = a.port or s.port
    procs = a.workers or s.web_concurrency
    print(
        f"[vision] {cfg.name}: http://{a.host}:{port} backend {s.backend} devices {s.devices} "
        f"workers {s.workers} processes {procs} models {s.models_dir} (lazy, idle {s.idle_timeout_s:g}s)",
        flush=True,
    )
    if procs > 1:
        # Several processes need an import string; each rebuilds its settings from the same env.
        os.environ["VISION_CONFIG"] = cfg.name
        uvicorn.run("services.vision.app:create_app_from_env", factory=True, host=a.host, port=port,
                    workers=procs, log_level="warning", timeout_graceful_shutdown=5)
        return 0
    from services.vision.app import create_app

    uvicorn.run(create_app(s), host=a.host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
