"""The MT Photos AI HTTP contract (official mt-photos-ai + the insightface face service, on one port).

GET / (no key), POST /check, /restart, /restart_v2, /ocr, /clip/img, /clip/txt, /represent; header
`api-key`. Wrong key -> 401 {"detail": "Invalid API key"}; missing header -> 422 (FastAPI), as upstream.
Recoverable failures (bad image, missing model files, inference errors) -> 200 {"result": [], "msg"}.
/restart is a no-op like the official AI service; /restart_v2 answers {"result": "pass"} at once and
then releases and reloads the loaded models in the background, without dropping in-flight requests
(upstream re-executes the process and never answers, which MT Photos tolerates either way).
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, File, Header, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from services.common.admin import admin_router
from services.common.metrics import INFERENCE_ERRORS, track_lifecycle
from services.vision.engine import LifecycleGroup, ModelMissing, Vision
from services.vision.images import ImageError, decode_image
from services.vision.settings import Settings

log = logging.getLogger("vision")
HELP_URL = "https://mtmt.tech/docs/advanced/ocr_api"
MAX_DISTANCE = 0.5  # recommended MT Photos face-matching distance, advertised in /check


class ClipText(BaseModel):
    text: str


def _fail(msg: str) -> dict[str, Any]:
    return {"result": [], "msg": msg}


def create_app(settings: Settings) -> FastAPI:
    vision = Vision(settings)
    group = LifecycleGroup(vision)
    track_lifecycle(group, settings.config_name)  # type: ignore[arg-type]
    background: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        await vision.close()

    app = FastAPI(title="MT Photos AI (modelplat vision)", lifespan=lifespan)
    app.state.vision = vision
    app.include_router(admin_router(group, {"engine": "vision", "config": settings.config_name}))  # type: ignore[arg-type]

    def verify_key(api_key: str = Header(...)) -> None:
        if api_key != settings.api_key:
            raise HTTPException(status_code=401, detail="Invalid API key")

    async def infer(task: str, *args: Any) -> Any:
        missing = vision.missing(task)
        if missing:
            return _fail(missing)
        try:
            return {"result": await vision.run(task, *args)}
        except ModelMissing as e:
            return _fail(str(e))
        except Exception as e:  # a model/runtime failure must not become a 500 (MT Photos retries)
            log.exception("%s failed", task)
            INFERENCE_ERRORS.labels(settings.config_name, task, type(e).__name__[:40]).inc()
            return _fail(f"{task} failed: {type(e).__name__}: {e}")

    async def read_image(file: UploadFile) -> Any:
        data = await file.read()
        return decode_image(data, file.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MT Photos AI</title></head><body>"
            "<h1>MT Photos AI service</h1><p>status: running</p>"
            f"<p><a href='{HELP_URL}'>API documentation</a></p></body></html>"
        )

    @app.post("/check", dependencies=[Depends(verify_key)])
    async def check() -> dict[str, Any]:
        return {
            "result": "pass",
            "title": "mt-photos-ai服务",
            "help": HELP_URL,
            "backend": settings.backend,
            "device": settings.devices["ocr"],  # a string, like the official CUDA image's field
            "devices": settings.devices,
            "ocr_model": settings.ocr_model,
            "clip_model": settings.clip_model,
            "detector_backend": "insightface",
            "recognition_model": settings.face_model,
            "facial_min_score": settings.detection_thresh,
            "facial_max_distance": MAX_DISTANCE,
        }

    @app.post("/restart", dependencies=[Depends(verify_key)])
    async def restart() -> dict[str, Any]:
        return {"result": "pass"}

    @app.post("/restart_v2", dependencies=[Depends(verify_key)])
    async def restart_v2() -> dict[str, Any]:
        task = asyncio.get_running_loop().create_task(vision.restart())
        background.add(task)
        task.add_done_callback(background.discard)
        return {"result": "pass"}

    @app.post("/ocr", dependencies=[Depends(verify_key)])
    async def ocr_route(file: UploadFile = File(...)) -> dict[str, Any]:
        try:
            img = await read_image(file)
        except ImageError as e:
            return _fail(str(e))
        return await infer("ocr", img)

    @app.post("/clip/img", dependencies=[Depends(verify_key)])
    async def clip_img(file: UploadFile = File(...)) -> dict[str, Any]:
        try:
            img = await read_image(file)
        except ImageError as e:
            return _fail(str(e))
        return await infer("clip_img", img)

    @app.post("/clip/txt", dependencies=[Depends(verify_key)])
    async def clip_txt(body: ClipText) -> dict[str, Any]:
        return await infer("clip_txt", body.text)

    @app.post("/represent", dependencies=[Depends(verify_key)])
    async def represent(file: UploadFile = File(...)) -> dict[str, Any]:
        try:
            img = await read_image(file)
        except ImageError as e:
            return _fail(str(e))
        out = await infer("face", img)
        if "msg" in out:
            return out
        return {"detector_backend": "insightface", "recognition_model": settings.face_model, **out}

    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for WEB_CONCURRENCY > 1: each worker process rebuilds its settings."""
    from gateway.configs import load_catalog
    from services.vision.settings import from_config

    cfg = load_catalog().require(os.environ["VISION_CONFIG"])
    return create_app(from_config(cfg))
