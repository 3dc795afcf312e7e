"""OpenAI API on the gateway: models, chat completions, completions, embeddings.

vLLM already speaks OpenAI, so these routes are pass-through: the body is parsed once to find the
model (and checked enough to answer bad input with a 400 of our own), the model name is rewritten to
the backend's served name when the client used an alias, and the backend's bytes go back untouched;
streams are relayed chunk by chunk without parsing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response, StreamingResponse

from gateway import schemas
from gateway.configs import Config, Protocol
from gateway.context import Gateway, gw
from gateway.errors import BadRequest, GatewayError, UpstreamError, json_object, json_response, openai_body
from gateway.forward import open_stream, relay_chunks, send
from gateway.registry import Route
from gateway.upstream import Stream

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

T = TypeVar("T")
router = APIRouter(tags=["openai"])
STARTED = int(time.time())
# Pass-through routes and the body fields the gateway checks itself.
PASS_THROUGH: dict[str, dict[str, tuple[type, ...]]] = {
    "/v1/chat/completions": {"messages": (list,)},
    "/v1/completions": {"prompt": (str, list)},
    "/v1/embeddings": {"input": (str, list)},
}


def parse_body(raw: bytes) -> dict[str, Any]:
    return json_object(raw, "openai")


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("You must provide a model parameter (a non-empty string).", param="model")
    return model


def check_fields(body: dict[str, Any], checks: dict[str, tuple[type, ...]]) -> None:
    for name, types in checks.items():
        if name not in body:
            raise BadRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        value = body[name]
        if not isinstance(value, types) or (isinstance(value, list | str) and not value and name != "prompt"):
            expected = " or ".join(t.__name__ for t in types)
            raise BadRequest(f"Invalid value for '{name}': expected a non-empty {expected}.", param=name)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise BadRequest("Invalid value for 'stream': expected a boolean.", param="stream")


def error_event(err: GatewayError) -> bytes:
    """How an SSE client learns that the stream failed after it began (the status is already 200)."""
    return b"data: " + orjson.dumps(openai_body(err)) + b"\n\ndata: [DONE]\n\n"


@dataclass(slots=True)
class Whole:
    """A whole answer to send back: status, content type, body."""

    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class Streaming:
    route: Route
    stream: Stream


async def pass_through(g: Gateway, path: str, raw: bytes) -> Whole | Streaming:
    """The whole pass-through request, shared by the raw ASGI path and the FastAPI routes."""
    body = parse_body(raw)
    model = require_model(body)
    check_fields(body, PASS_THROUGH[path])
    route = g.registry.resolve(model, Protocol.openai)
    served = route.config.model.served_name
    if model != served:
        body["model"] = served
        raw = orjson.dumps(body)
    if body.get("stream"):
        stream = await open_stream(g, route, path, body=raw, stream=True)
        if stream.status != 200:
            return backend_reply(stream.status, stream.headers.get("Content-Type", ""), await stream.read())
        return Streaming(route, stream)
    reply = await send(g, route, path, body=raw)
    return backend_reply(reply.status, reply.headers.get("Content-Type", "application/json"), reply.body)


async def relay(request: Request, path: str) -> Response:
    """The FastAPI route's answer (the raw ASGI path below answers the same requests faster)."""
    g = gw(request)
    out = await pass_through(g, path, await request.body())
    if isinstance(out, Whole):
        return Response(out.body, status_code=out.status, media_type=out.content_type)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in relay_chunks(g, out.route.backend, out.stream):
                yield chunk
        except UpstreamError as e:
            yield error_event(e)

    return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def backend_reply(status: int, content_type: str, body: bytes) -> Whole:
    """Pass a backend answer through. Errors leave in OpenAI's shape; a backend's own 5xx becomes a 502,
    so a client can tell a broken backend from a broken gateway."""
    if status < 400:
        return Whole(status, content_type or "application/json", body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if status < 500 and isinstance(data, dict) and isinstance(data.get("error"), dict):
        return Whole(status, "application/json", body)
    if isinstance(data, dict):
        inner = data.get("error")
        message = inner.get("message") if isinstance(inner, dict) else (inner or data.get("detail") or data)
    else:
        message = body.decode(errors="replace")
    status = status if status < 500 else 502
    err = UpstreamError("status", f"backend error: {message}"[:2000], status=status)
    return Whole(status, "application/json", orjson.dumps(openai_body(err)))


# ---------------------------------------------------------------- the raw ASGI path
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class FastPath:
    """POST /v1/chat/completions, /v1/completions and /v1/embeddings without FastAPI's request machinery
    (routing, dependency solving, Request/Response objects, a task group per stream): those cost more
    than the proxying itself. The FastAPI routes stay registered, for the OpenAPI document and as the
    fallback; both call `pass_through`, so they answer alike. Errors go through the app's
    GatewayError handler, as the routes' errors do."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app, self.fastapi = app, fastapi
        self.routes: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PASS_THROUGH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self.routes:  # this module's own route objects (the app may wrap included routers)
            self.routes = {r.path: r for r in router.routes if getattr(r, "path", None) in PASS_THROUGH}
        scope["route"] = self.routes.get(path)  # the metrics label the FastAPI route would have set
        g: Gateway = self.fastapi.state.gw
        try:
            raw = await read_body(receive)
            out = await cancel_on_disconnect(pass_through(g, path, raw), receive)
        except ClientGone:
            return  # the upstream request was cancelled with the work; nobody is left to answer
        except GatewayError as e:
            response = await self.fastapi.exception_handlers[GatewayError](Request(scope, receive), e)
            await response(scope, receive, send)
            return
        if isinstance(out, Whole):
            ctype = out.content_type.encode("latin-1")
            headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(out.body))]
            await send({"type": "http.response.start", "status": out.status, "headers": headers})
            await send({"type": "http.response.body", "body": out.body})
            return
        await relay_sse(g, out, receive, send)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def cancel_on_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Await `work`, cancelling it if the client hangs up meanwhile: a non-streamed generation the client
    no longer waits for stops on the backend too (cancelling closes the upstream connection)."""
    task = asyncio.current_task()
    assert task is not None
    state = {"done": False, "gone": False}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state["done"]:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"]:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        state["done"] = True
        watcher.cancel()


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def relay_sse(g: Gateway, out: Streaming, receive: Receive, send: Send) -> None:
    """Relay an SSE stream chunk by chunk. A client that goes away closes the upstream at once (the
    backend sees the drop and aborts the generation), even while the backend is silent."""
    stream = out.stream
    gone = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not gone.done():
            gone.set_result(True)
            stream.close()

    watcher = asyncio.ensure_future(watch())
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    try:
        async for chunk in relay_chunks(g, out.route.backend, stream):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as e:
        if not gone.done():
            await send({"type": "http.response.body", "body": error_event(e), "more_body": True})
    finally:
        gone.done() or gone.set_result(False)
        watcher.cancel()
    await send({"type": "http.response.body", "body": b""})


def install(app: FastAPI) -> None:
    """Called by create_app(): put the raw path in front of the routes."""
    app.add_middleware(FastPath, fastapi=app)


# ---------------------------------------------------------------- routes
def model_entries(cfg: Config) -> list[dict[str, Any]]:
    meta = {
        "object": "model", "created": STARTED, "owned_by": "modelplat", "config": cfg.name,
        "engine": cfg.engine.value, "capabilities": [c.value for c in cfg.model.capabilities],
    }
    if cfg.model.context_length:
        meta["max_model_len"] = cfg.model.context_length
    return [{"id": name, **meta, "root": cfg.model.served_name} for name in cfg.model_names()]


@router.get("/v1/models", response_model=schemas.ModelList)
async def list_models(request: Request) -> Response:
    """Every running config's models: the served name, the config name and the aliases."""
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for cfg in gw(request).registry.running_configs(Protocol.openai):
        for entry in model_entries(cfg):
            if entry["id"] not in seen:
                seen.add(entry["id"])
                data.append(entry)
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", response_model=schemas.Model)
async def get_model(model: str, request: Request) -> Response:
    route = gw(request).registry.resolve(model, Protocol.openai)
    entry = next(e for e in model_entries(route.config) if e["id"] == route.config.model.served_name)
    return json_response({**entry, "id": model})


@router.post("/v1/chat/completions", openapi_extra=schemas.body_schema(schemas.ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    """Chat completion, passed through to the model's backend; an SSE stream when `stream` is true."""
    return await relay(request, "/v1/chat/completions")


@router.post("/v1/completions", openapi_extra=schemas.body_schema(schemas.CompletionRequest))
async def completions(request: Request) -> Response:
    """Text completion, passed through; an SSE stream when `stream` is true."""
    return await relay(request, "/v1/completions")


@router.post("/v1/embeddings", openapi_extra=schemas.body_schema(schemas.EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    """Embeddings, passed through."""
    return await relay(request, "/v1/embeddings")

