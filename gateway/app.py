"""The gateway application: one FastAPI app, one router per protocol, errors in each protocol's shape."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway import limits, metrics
from gateway.context import Gateway, gw
from gateway.errors import BadRequest, GatewayError, UpstreamError, json_response, render
from gateway.forward import admin
from gateway.registry import Registry
from gateway.upstream import Timeouts, Upstream

log = logging.getLogger("gateway")

# Protocol modules, in routing order. A module that is not there yet is skipped, so the gateway runs
# with whatever protocols are installed.
PROTOCOL_MODULES = ("openai", "ollama", "mtphotos", "images")
PROTOCOL_SHAPES = {"ollama": "ollama", "mtphotos": "mtphotos"}  # error shape per module (default: openai)
MTPHOTOS_PATHS = ("/check", "/ocr", "/clip/", "/represent", "/restart")


def error_shape(path: str) -> str:
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith(MTPHOTOS_PATHS):
        return "mtphotos"
    return "openai"


def create_app(registry: Registry | None = None) -> FastAPI:
    gateway = Gateway(registry=registry or Registry(), upstream=Upstream())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.upstream.start()
        for hook in gateway.extras.get("startup", []):
            await hook(gateway)
        try:
            yield
        finally:
            for hook in gateway.extras.get("shutdown", []):
                await hook(gateway)
            await gateway.upstream.close()

    app = FastAPI(
        title="modelplat gateway",
        version="0.1.0",
        description="One front door for OpenAI, Ollama and MT Photos clients.",
        lifespan=lifespan,
    )
    app.state.gw = gateway
    install_error_handlers(app)
    app.include_router(health_router())
    for name in PROTOCOL_MODULES:
        try:
            module = importlib.import_module(f"gateway.protocols.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"gateway.protocols.{name}":
                raise
            continue
        app.include_router(module.router, responses=limits.error_docs(PROTOCOL_SHAPES.get(name, "openai")))
        if hasattr(module, "install"):
            module.install(app)
    limits.install(app, gateway, error_shape)  # issue 8: keys, body/rate/stream limits, usage, shared store
    metrics.install(app)  # issue 7: request metrics middleware, /metrics, upstream-error counting
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> Response:
        return render(exc, error_shape(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        shape = error_shape(request.url.path)
        if shape == "mtphotos":  # MT Photos clients know FastAPI's own 422 shape
            return json_response({"detail": jsonable(exc.errors())}, 422)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        err = BadRequest(f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid')}", param=where or None,
                         status=400 if shape == "ollama" else 422)
        return render(err, shape)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        err = GatewayError(str(exc.detail), status=exc.status_code)
        err.type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return render(err, error_shape(request.url.path))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        # A bug must still answer in the client's protocol; the traceback goes to the log.
        log.exception("unhandled error on %s", request.url.path)
        return render(GatewayError(f"internal gateway error: {type(exc).__name__}"), error_shape(request.url.path))


def jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v if isinstance(v, str | int | float | list | dict | None) else str(v)) for k, v in e.items()
             if k != "ctx"} for e in errors]


def health_router():
    from fastapi import APIRouter

    r = APIRouter(tags=["health"])

    @r.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the gateway process answers."""
        return {"status": "ok"}

    @r.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: every running backend answers its health check."""
        g = gw(request)
        backends = list(g.registry.all_backends())
        results = await asyncio.gather(*(probe(g, b) for b in backends))
        report = {b.config + "@" + b.url: r for b, r in zip(backends, results, strict=True)}
        ok = all(r["reachable"] for r in results)
        return json_response({"status": "ready" if ok else "degraded", "backends": report}, 200 if ok else 503)

    return r


async def probe(g: Gateway, backend) -> dict[str, Any]:
    try:
        state = await admin(g, backend, "GET", "/admin/lifecycle", timeouts=Timeouts(2, 5))
        return {"reachable": True, "state": state.get("state")}
    except UpstreamError:
        pass
    try:  # a backend without the admin API (e.g. vLLM run directly): its own /health
        reply = await g.upstream.request("GET", backend.url + "/health", timeouts=Timeouts(2, 5))
        return {"reachable": reply.status < 500, "state": "ready" if reply.status == 200 else "unknown"}
    except UpstreamError as e:
        return {"reachable": False, "error": e.message}
