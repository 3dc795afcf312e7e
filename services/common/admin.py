"""The admin API every service exposes, so the gateway and scripts drive any engine the same way.

GET  /healthz               liveness (the process answers; the model may be unloaded)
GET  /admin/lifecycle       state, idle timeout, load counts
POST /admin/load            load now; returns when ready
POST /admin/unload          unload once in-flight requests finish
POST /admin/idle-timeout    {"seconds": N}: change the idle timeout at run time (0 = never)
GET  /metrics               Prometheus text
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from services.common.lifecycle import Lifecycle


class IdleTimeout(BaseModel):
    seconds: float = Field(ge=0, le=7 * 24 * 3600)


def admin_router(lc: Lifecycle, extra: dict[str, Any] | None = None) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", tags=["admin"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "state": lc.state.value, **(extra or {})}

    @r.get("/admin/lifecycle", tags=["admin"])
    async def lifecycle() -> dict[str, Any]:
        return {**lc.snapshot(), **(extra or {})}

    @r.post("/admin/load", tags=["admin"])
    async def load() -> dict[str, Any]:
        await lc.load()
        return lc.snapshot()

    @r.post("/admin/unload", tags=["admin"])
    async def unload() -> dict[str, Any]:
        unloaded = await lc.unload()
        return {**lc.snapshot(), "unloaded": unloaded}

    @r.post("/admin/idle-timeout", tags=["admin"])
    async def idle_timeout(body: IdleTimeout) -> dict[str, Any]:
        lc.set_idle_timeout(body.seconds)
        return lc.snapshot()

    @r.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return r
