"""OpenAI image generation on the gateway: POST /v1/images/generations and GET /v1/images/files/{id}.

Routed by `model` to a diffusers config (services/image). The body passes through (the service checks
sizes, steps and n against its config and answers bad input with an OpenAI 400 itself); the gateway
only needs a model, rewrites an alias to the served name, and tells the service its public address
(X-Forwarded-Host/Proto) so that `url` results point at the gateway. File ids carry the config name
(`<config>.<32 hex>.png`), so the file route finds the service that wrote the file without shared state.
Queue-full answers (429) keep the service's Retry-After.
"""

from __future__ import annotations

import re

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.configs import Engine, Protocol
from gateway.context import gw
from gateway.errors import BadRequest, GatewayError
from gateway.forward import JSON_HEADERS, send
from gateway.protocols.openai import backend_reply, parse_body, require_model
from gateway.registry import Route

router = APIRouter(tags=["images"])
FILE_ID = re.compile(r"^(?P<config>[a-z0-9][a-z0-9._-]*)\.[0-9a-f]{32}\.png$")
PASSED_HEADERS = ("Retry-After",)


class FileNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


def forwarded(request: Request) -> dict[str, str]:
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    proto = request.headers.get("x-forwarded-proto") or request.url.scheme
    return {**JSON_HEADERS, "X-Forwarded-Host": host, "X-Forwarded-Proto": proto}


@router.post("/v1/images/generations", summary="Create images (OpenAI images API)")
async def generations(request: Request) -> Response:
    """model, prompt, n, size 'WxH', response_format b64_json|url, and the engine's own fields: steps,
    guidance_scale, seed, negative_prompt (Ovis)."""
    g = gw(request)
    body = parse_body(await request.body())
    model = require_model(body)
    route = g.registry.resolve(model, Protocol.openai)
    if route.config.engine is not Engine.diffusers:
        raise BadRequest(f"The model '{model}' does not generate images.", param="model", code="model_not_supported")
    body["model"] = route.config.model.served_name
    reply = await send(g, route, "/v1/images/generations", body=orjson.dumps(body), headers=forwarded(request))
    out = backend_reply(reply.status, reply.headers.get("Content-Type", "application/json"), reply.body)
    headers = {h: reply.headers[h] for h in PASSED_HEADERS if h in reply.headers}
    return Response(out.body, status_code=out.status, media_type=out.content_type, headers=headers)


@router.get("/v1/images/files/{file_id}", summary="An image behind a `url` result (expires)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def image_file(file_id: str, request: Request) -> Response:
    g = gw(request)
    m = FILE_ID.match(file_id)
    cfg = g.registry.catalog.get(m.group("config")) if m else None
    backends = g.registry.running().get(cfg.name, []) if cfg else []
    for backend in backends:  # replicas do not share files: ask each until one has it
        reply = await send(g, Route(cfg, backend), f"/v1/images/files/{file_id}", method="GET", headers={})
        if reply.status == 200:
            return Response(reply.body, media_type=reply.headers.get("Content-Type", "image/png"))
    raise FileNotFound(f"image {file_id!r} does not exist or has expired", param="file_id")
