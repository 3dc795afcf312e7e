"""MT Photos AI API on the gateway: GET /, POST /check, /ocr, /clip/img, /clip/txt, /represent,
/restart, /restart_v2, forwarded byte for byte to the running vision config.

MT Photos has no model field, so the config is chosen by protocol: the running config that speaks
`mtphotos` (env MTPHOTOS_CONFIG pins one when several run; vectors from different configs are not
comparable, so requests never alternate between configs), and among its replicas the least loaded.
The `api-key` header goes through untouched: the service checks it (401/422 exactly as upstream).
The same routes answer on MT Photos' default port 8060 when the gateway is started with
MTPHOTOS_PORT=8060 (gateway/__main__.py listens on it too). `GET /` is not routed here: on the shared
app it belongs to Ollama ("Ollama is running"), and MT Photos only calls the POST routes.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.configs import Config, Protocol
from gateway.context import Gateway, gw
from gateway.errors import GatewayError
from gateway.forward import send
from gateway.registry import Route

router = APIRouter(tags=["mtphotos"])
POST_PATHS = ("/check", "/ocr", "/clip/img", "/clip/txt", "/represent", "/restart", "/restart_v2")
# Headers that describe the body or authenticate; everything else (hop-by-hop, cookies) stays here.
FORWARD_HEADERS = ("content-type", "api-key")
PASS_BACK = ("content-type",)


class NoVisionService(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "backend_stopped"


def pick_config(g: Gateway) -> Config:
    running = sorted(g.registry.running_configs(Protocol.mtphotos), key=lambda c: c.name)
    pinned = os.environ.get("MTPHOTOS_CONFIG")
    if pinned:
        for cfg in running:
            if cfg.name == pinned:
                return cfg
        raise NoVisionService(
            f"MTPHOTOS_CONFIG is {pinned!r} but that config is not running; start it with: "
            f"./start-service.sh {pinned}"
        )
    if not running:
        # CPU configs first: they run anywhere, so the hint works as given.
        known = [c.name for c in sorted(g.registry.catalog, key=lambda c: (not c.is_cpu, c.name))
                 if Protocol.mtphotos in c.protocols]
        hint = f" Start one with: ./start-service.sh {known[0]}" if known else ""
        raise NoVisionService(
            f"No MT Photos AI service is running (configs that serve it: {', '.join(known) or 'none'}).{hint}"
        )
    return running[0]


def pick_route(g: Gateway) -> Route:
    cfg = pick_config(g)
    backends = g.registry.running().get(cfg.name, [])
    if not backends:  # the file changed between the two reads
        raise NoVisionService(f"the MT Photos AI service '{cfg.name}' just stopped")
    backend = min(backends, key=lambda b: g.registry.inflight.get(b.url, 0))
    return Route(cfg, backend)


async def forward(request: Request) -> Response:
    g = gw(request)
    route = pick_route(g)
    headers = {k: v for k in FORWARD_HEADERS if (v := request.headers.get(k)) is not None}
    reply = await send(g, route, request.url.path, body=await request.body(), headers=headers)
    out = {k: v for k in PASS_BACK if (v := reply.headers.get(k)) is not None}
    return Response(reply.body, status_code=reply.status, headers=out)


for _path in POST_PATHS:
    router.add_api_route(_path, forward, methods=["POST"], include_in_schema=True, name=f"mtphotos{_path}")
