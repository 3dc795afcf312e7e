"""HTTP API of the image service (FastAPI; Swagger UI at /docs).

POST /v1/images/generations   OpenAI images API (+ steps, guidance_scale, seed, negative_prompt)
GET  /v1/images/files/{id}    PNG behind a `url` result (expires after IMAGE_URL_TTL_S)
POST /api/generate            the original Ovis deployment's simple API
GET  /outputs/{filename}      PNG written by /api/generate
GET  /v1/models               what this service serves
+ the shared admin API (services/common/admin.py): /healthz, /admin/*, /metrics
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

from gateway.configs import Config
from services.common.admin import admin_router
from services.image import errors, metrics
from services.image.api import ImageData, ImagesRequest, ImagesResponse, SimpleGenerate, SimpleResult, make_job
from services.image.errors import BadRequest, EngineFailed, FileNotFound, ImageError, ModelNotFound
from services.image.jobs import Job, Result
from services.image.service import ImageService


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def encoded(images: list[Any]) -> list[bytes]:
    """PNG bytes, encoded in a worker thread: a 1024px image takes 0.1 s or more of zlib, and on the event
    loop that would stall every other request (health checks and metrics included)."""
    return await asyncio.to_thread(lambda: [png_bytes(im) for im in images])


def public_base(request: Request) -> str:
    """Where clients reach us: the gateway passes X-Forwarded-Host/Proto/Prefix, direct callers don't."""
    host = request.headers.get("x-forwarded-host")
    if not host:
        return str(request.base_url).rstrip("/")
    proto = request.headers.get("x-forwarded-proto", "http")
    return f"{proto}://{host}{request.headers.get('x-forwarded-prefix', '').rstrip('/')}"


def create_app(svc: ImageService) -> FastAPI:
    cfg: Config = svc.cfg
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await svc.scheduler.close()

    app = FastAPI(title=f"Image generation: {cfg.model.served_name}", lifespan=lifespan,
                  description=f"{cfg.description}\n\nOpenAI-compatible image API plus the simple /api/generate.",
                  version="1.0")
    app.state.service = svc
    errors.install(app)
    app.include_router(admin_router(svc.lc, {"config": cfg.name, "device": svc.device}))

    async def run(job: Job, api: str) -> Result:
        try:
            result = await svc.generate(job)
        except ImageError as e:
            metrics.error(cfg.name, "queue_full" if e.status == 429 else "engine")
            metrics.REQUESTS.labels(cfg.name, api, "error").inc()
            raise
        except Exception as e:  # load or pipeline failure: a clear 503, never a bare 500
            metrics.error(cfg.name, "engine")
            metrics.REQUESTS.labels(cfg.name, api, "error").inc()
            raise EngineFailed(f"image generation failed: {type(e).__name__}: {e}") from e
        metrics.REQUESTS.labels(cfg.name, api, "ok").inc()
        metrics.IMAGES.labels(cfg.name, api).inc(len(result.images))
        return result

    def validated(fn: Any, *args: Any, **kwargs: Any) -> Job:
        try:
            return fn(*args, **kwargs)
        except BadRequest:
            metrics.error(cfg.name, "bad_request")
            raise

    @app.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
              tags=["openai"], summary="Create images (OpenAI images API)")
    async def generations(body: ImagesRequest, request: Request) -> dict[str, Any]:
        if body.model and body.model not in cfg.model_names():
            metrics.error(cfg.name, "not_found")
            raise ModelNotFound(body.model, cfg.model_names())
        job = validated(make_job, body.prompt, body.size, body.n, body.steps, body.guidance_scale, body.seed,
                        body.negative_prompt, cfg.diffusers)
        result = await run(job, "openai")
        data = []
        for png, seed in zip(await encoded(result.images), result.seeds, strict=True):
            if body.response_format == "url":
                url = f"{public_base(request)}/v1/images/files/{svc.store.save(png)}"
                data.append(ImageData(url=url, seed=seed))
            else:
                data.append(ImageData(b64_json=base64.b64encode(png).decode(), seed=seed))
        return {"created": int(time.time()), "data": data}

    @app.get("/v1/images/files/{file_id}", tags=["openai"], summary="An image behind a `url` result",
             response_class=FileResponse)
    async def image_file(file_id: str) -> FileResponse:
        return _file(svc, file_id)

    @app.post("/api/generate", response_model=SimpleResult, tags=["simple"],
              summary="Generate one image (the original Ovis deployment's API)")
    async def simple_generate(body: SimpleGenerate) -> SimpleResult:
        names = {"size": "image_size", "steps": "denoising_steps", "guidance": "cfg_scale"}
        job = validated(make_job, body.prompt, body.image_size, 1, body.denoising_steps, body.cfg_scale,
                        body.seed, body.negative_prompt, cfg.diffusers, names)
        result = await run(job, "simple")
        filename = svc.store.save((await encoded(result.images[:1]))[0])
        return SimpleResult(filename=filename, url=f"/outputs/{filename}", seed=result.seeds[0],
                            image_size=f"{job.width}x{job.height}", seconds=round(result.seconds, 3))

    @app.get("/outputs/{filename}", tags=["simple"], summary="An image written by /api/generate",
             response_class=FileResponse)
    async def outputs(filename: str) -> FileResponse:
        return _file(svc, filename)

    @app.get("/v1/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": cfg.model.served_name, "object": "model", "owned_by": "modelplat"}]}

    @app.get("/admin/image", tags=["admin"], summary="queue and speed-path state")
    async def info() -> dict[str, Any]:
        return {**svc.info(), "lifecycle": svc.lc.snapshot()}

    return app


def _file(svc: ImageService, file_id: str) -> FileResponse:
    path = svc.store.path(file_id)
    if path is None:
        metrics.error(svc.cfg.name, "not_found")
        raise FileNotFound(file_id)
    return FileResponse(path, media_type="image/png")
