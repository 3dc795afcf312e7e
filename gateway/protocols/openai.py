"""OpenAI API on the gateway: models, chat completions, completions, embeddings.

vLLM already speaks OpenAI, so these routes are pass-through: the body is parsed once to find the
model (and checked enough to answer bad input with a 400 of our own), the model name is rewritten to
the backend's served name when the client used an alias, and the backend's bytes go back untouched;
streams are relayed chunk by chunk without parsing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway import schemas
from gateway.configs import Config, Protocol
from gateway.context import Gateway, gw
from gateway.errors import BadRequest, GatewayError, UpstreamError, json_response, openai_body
from gateway.forward import open_stream, relay_chunks, send

router = APIRouter(tags=["openai"])
STARTED = int(time.time())


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


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


async def relay(request: Request, path: str, checks: dict[str, tuple[type, ...]]) -> Response:
    g = gw(request)
    raw = await request.body()
    body = parse_body(raw)
    model = require_model(body)
    check_fields(body, checks)
    route = g.registry.resolve(model, Protocol.openai)
    served = route.config.model.served_name
    if model != served:
        body["model"] = served
        raw = orjson.dumps(body)
    if body.get("stream"):
        return await relay_stream(g, route, path, raw)
    reply = await send(g, route, path, body=raw)
    return backend_reply(reply.status, reply.headers.get("Content-Type", "application/json"), reply.body)


async def relay_stream(g: Gateway, route: Any, path: str, raw: bytes) -> Response:
    stream = await open_stream(g, route, path, body=raw)
    if stream.status != 200:
        return backend_reply(stream.status, stream.headers.get("Content-Type", ""), await stream.read())

    async def chunks():
        try:
            async for chunk in relay_chunks(g, route.backend, stream):
                yield chunk
        except UpstreamError as e:
            yield error_event(e)

    return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def backend_reply(status: int, content_type: str, body: bytes) -> Response:
    """Pass a backend answer through. Errors leave in OpenAI's shape; a backend's own 5xx becomes a 502,
    so a client can tell a broken backend from a broken gateway."""
    if status < 400:
        return Response(body, status_code=status, media_type=content_type or "application/json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if status < 500 and isinstance(data, dict) and isinstance(data.get("error"), dict):
        return Response(body, status_code=status, media_type="application/json")
    if isinstance(data, dict):
        inner = data.get("error")
        message = inner.get("message") if isinstance(inner, dict) else (inner or data.get("detail") or data)
    else:
        message = body.decode(errors="replace")
    status = status if status < 500 else 502
    err = UpstreamError("status", f"backend error: {message}"[:2000], status=status)
    return json_response(openai_body(err), status)


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
    return await relay(request, "/v1/chat/completions", {"messages": (list,)})


@router.post("/v1/completions", openapi_extra=schemas.body_schema(schemas.CompletionRequest))
async def completions(request: Request) -> Response:
    return await relay(request, "/v1/completions", {"prompt": (str, list)})


@router.post("/v1/embeddings", openapi_extra=schemas.body_schema(schemas.EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    return await relay(request, "/v1/embeddings", {"input": (str, list)})

