"""MT Photos AI API on the gateway: GET /, POST /check, /ocr, /clip/img, /clip/txt, /represent,
/restart, /restart_v2, forwarded byte for byte to the running vision config.

MT Photos has no model field, so the config is chosen by protocol: the running config that speaks
`mtphotos` (env MTPHOTOS_CONFIG pins one when several run; vectors from different configs are not
comparable, so requests never alternate between configs), and among its replicas the least loaded.
The `api-key` header goes through untouched: the service checks it (401/422 exactly as upstream).
The same routes answer on MT Photos' default port 8060 when the gateway is started with
MTPHOTOS_PORT=8060 (gateway/__main__.py listens on it too). `GET /` on that port is MT Photos' status
page (`MTPhotosHome`); on the other ports `/` belongs to Ollama ("Ollama is running").
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


HOME_PAGE = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>MT Photos AI</title></head><body>"
    b"<h3>MT Photos AI service (modelplat gateway)</h3><p>status: running</p>"
    b"<p>Endpoints: POST /check, /ocr, /clip/img, /clip/txt, /represent, /restart, /restart_v2 "
    b"(header <code>api-key</code>)</p></body></html>"
)


class MTPhotosHome:
    """`GET /` on the MT Photos listener answers like the MT Photos service; on every other port `/`
    stays Ollama's ("Ollama is running"). Installed only when MTPHOTOS_PORT is set, so it costs
    nothing otherwise."""

    def __init__(self, app, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD")
                and (scope.get("server") or ("", 0))[1] == self.port):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(HOME_PAGE)).encode())]})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else HOME_PAGE})
            return
        await self.app(scope, receive, send)


def install(app) -> None:
    port = os.environ.get("MTPHOTOS_PORT")
    if port and port.isdigit():
        app.add_middleware(MTPhotosHome, port=int(port))
