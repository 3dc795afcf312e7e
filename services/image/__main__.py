"""`python -m services.image --config NAME [--host 127.0.0.1] [--port 8000]`: the image service.

The model is NOT loaded here: it loads on the first request (or POST /admin/load).
"""

from __future__ import annotations

import os

# before torch / huggingface_hub are imported anywhere
if os.environ.get("IMAGE_ALLOW_DOWNLOAD") != "1":  # production sets it to fetch the checkpoint once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="image generation service (diffusers)")
    ap.add_argument("--config", required=True, help="config name (configs/NAME.yaml)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from gateway.configs import Engine, load_catalog
    from services.image.gpu import select_device

    cfg = load_catalog().require(args.config)
    if cfg.engine != Engine.diffusers:
        raise SystemExit(f"config {cfg.name!r} is for engine {cfg.engine.value!r}, not diffusers")
    device = select_device(cfg.gpus)  # sets CUDA_VISIBLE_DEVICES before torch touches CUDA
    settings_cache = os.environ.get("IMAGE_COMPILE_CACHE")
    if settings_cache:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(settings_cache, "inductor"))

    import uvicorn

    from services.image.app import create_app
    from services.image.service import ImageService

    app = create_app(ImageService(cfg, device))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
