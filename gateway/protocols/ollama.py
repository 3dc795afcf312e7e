"""Ollama API on the gateway, for every vLLM-backed config, translated to and from the backends' OpenAI API.

The translation itself is pure and lives in `gateway.adapters.ollama`; this module does the I/O through
`gateway.forward` (one pooled client, wake-on-demand, in-flight accounting). Generation always streams
from the backend: chunks are translated as they arrive (NDJSON out), or folded into one object for
`stream: false`. Closing the upstream stream on client disconnect makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from gateway.adapters import ollama as ad
from gateway.adapters import ollama_types as t
from gateway.configs import Config, Protocol
from gateway.configs.catalog import configs_dir
from gateway.context import Gateway, gw
from gateway.errors import BadRequest, GatewayError, UnknownModel, UpstreamError, json_object, json_response
from gateway.forward import LOAD_TIMEOUTS, WAKE_NS, admin, open_stream, relay_chunks, send
from gateway.registry import Backend, Route
from gateway.schemas import body_schema
from gateway.upstream import Timeouts

router = APIRouter(tags=["ollama"])
# Clients gate features on the version (e.g. `think`, structured outputs): report a recent release.
VERSION = os.environ.get("OLLAMA_COMPAT_VERSION", "0.13.5")
NDJSON = "application/x-ndjson"
PROBE_TIMEOUTS = Timeouts(2, 5)
_background: set[asyncio.Task[Any]] = set()


def doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a request body that the route reads itself (tolerantly, like Ollama)."""
    return body_schema(model)


# ---------------------------------------------------------------- request helpers


async def read_body(request: Request) -> dict[str, Any]:
    return json_object(await request.body(), "ollama")


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model") or body.get("name")  # older clients send `name`
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model is required", param="model")
    return model.strip()


def configured(g: Gateway, model: str) -> Config:
    """A config that answers Ollama under this name, running or not (for /api/show)."""
    cfgs = [c for c in g.registry.configs_for(model) if Protocol.ollama in c.protocols]
    if not cfgs:
        raise UnknownModel(model, g.registry.available_models(Protocol.ollama))
    return cfgs[0]


def modified_ns(cfg: Config) -> int:
    try:
        return (configs_dir() / f"{cfg.name}.yaml").stat().st_mtime_ns
    except OSError:
        return time.time_ns()


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def backend_error(status: int, body: bytes) -> GatewayError:
    """A backend's error reply, as an Ollama error with a sensible status (a backend crash is a 502)."""
    try:
        message = ad.error_message(orjson.loads(body))
    except orjson.JSONDecodeError:
        message = body.decode(errors="replace").strip() or f"backend answered {status}"
    return UpstreamError("status", message[:2000], status=status if status < 500 else 502)


def spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


# ---------------------------------------------------------------- keep_alive -> the service lifecycle


def replicas(g: Gateway, route: Route) -> list[Backend]:
    """keep_alive, load and unload are about the model: they apply to every replica of its config."""
    return list(g.registry.running().get(route.config.name, ())) or [route.backend]


async def on_replicas(g: Gateway, route: Route, path: str, payload: object = None) -> None:
    await asyncio.gather(*(admin(g, b, "POST", path, payload, timeouts=LOAD_TIMEOUTS) for b in replicas(g, route)))


async def apply_keep_alive(g: Gateway, route: Route, seconds: float | None) -> None:
    """Ollama's keep_alive sets how long the model stays loaded; absent means the default (the config's).

    Mapped onto the service's idle timeout; the value last set per backend is remembered so a request
    costs an admin call only when it changes something.
    """
    default = float(route.config.idle_timeout_s)
    wanted = default if seconds is None else (0.0 if seconds == math.inf else seconds)
    last: dict[str, float] = g.extras.setdefault("ollama_idle_s", {})
    for b in replicas(g, route):
        if last.get(b.url, default) == wanted or b.admin_url == b.url:
            continue
        with contextlib.suppress(UpstreamError):  # best effort: the request itself must not fail because of it
            await admin(g, b, "POST", "/admin/idle-timeout", {"seconds": wanted}, timeouts=PROBE_TIMEOUTS)
            last[b.url] = wanted


async def after_request(g: Gateway, route: Route, keep: float | None) -> None:
    if keep == 0:
        with contextlib.suppress(UpstreamError):  # best effort, after the reply went out
            await on_replicas(g, route, "/admin/unload")
    else:
        await apply_keep_alive(g, route, keep)


async def load_or_unload(g: Gateway, route: Route, kind: str, model: str, keep: float | None,
                         t0: int, stream: bool) -> Response:
    if keep == 0:
        await on_replicas(g, route, "/admin/unload")
        obj = ad.load_reply(kind, model, "unload")
    else:
        t_load = time.monotonic_ns()
        await on_replicas(g, route, "/admin/load")
        loaded = time.monotonic_ns()
        await apply_keep_alive(g, route, keep)
        obj = ad.load_reply(kind, model, "load", load_ns=loaded - t_load, total_ns=time.monotonic_ns() - t0)
    if stream:
        return Response(line(obj), media_type=NDJSON)
    return json_response(obj)


# ---------------------------------------------------------------- generation


async def generation(request: Request, kind: str) -> Response:
    t0 = time.monotonic_ns()
    g = gw(request)
    body = await read_body(request)
    model = model_of(body)
    route = g.registry.resolve(model, Protocol.ollama)
    keep = ad.keep_alive_seconds(body.get("keep_alive"))
    if ad.is_load_request(kind, body):
        return await load_or_unload(g, route, kind, model, keep, t0, ad.client_stream(body))
    plan = (ad.chat_plan if kind == "chat" else ad.generate_plan)(body, route.config, model)
    return await run(g, route, plan, ad.Timing(start=t0), keep)


async def run(g: Gateway, route: Route, plan: ad.Plan, timing: ad.Timing, keep: float | None) -> Response:
    WAKE_NS.set(0)
    stream = await open_stream(g, route, plan.path, body=orjson.dumps(plan.body))
    timing.opened, timing.load_ns = time.monotonic_ns(), WAKE_NS.get()
    if stream.status != 200:
        raise backend_error(stream.status, await stream.read())
    tr = ad.Translator(plan.kind, plan.model, timing, show_thinking=plan.show_thinking)
    if not plan.stream:
        return await whole(g, route, stream, tr, keep)
    return StreamingResponse(ndjson(g, route, stream, tr, keep), media_type=NDJSON)


async def whole(g: Gateway, route: Route, stream: Any, tr: ad.Translator, keep: float | None) -> Response:
    try:
        async for chunk in relay_chunks(g, route.backend, stream):
            tr.feed(chunk)
        obj = tr.whole()
    except ad.StreamFailed as e:
        raise UpstreamError("broken", str(e)) from None
    finally:
        spawn(after_request(g, route, keep))
    return json_response(obj)


async def ndjson(g: Gateway, route: Route, stream: Any, tr: ad.Translator, keep: float | None) -> AsyncIterator[bytes]:
    """Chunk in, lines out. After the status line went out, a failure is one `{"error": ...}` line."""
    try:
        async for chunk in relay_chunks(g, route.backend, stream):
            out = tr.feed(chunk)
            if out:
                yield b"".join(line(o) for o in out)
        yield line(tr.final())
    except UpstreamError as e:
        yield line({"error": e.message})
    except ad.StreamFailed as e:
        yield b"".join(line(o) for o in [*e.partial, {"error": str(e)}])
    finally:
        stream.close()  # on client disconnect too: the backend sees the drop and aborts the request
        spawn(after_request(g, route, keep))


@router.post("/api/chat", openapi_extra=doc(t.ChatRequest), response_model=t.ChatResponse)
async def chat(request: Request) -> Response:
    """Chat; NDJSON stream of `ChatResponse` objects unless `stream` is false."""
    return await generation(request, "chat")


@router.post("/api/generate", openapi_extra=doc(t.GenerateRequest), response_model=t.GenerateResponse)
async def generate(request: Request) -> Response:
    """Completion of a prompt; NDJSON stream of `GenerateResponse` objects unless `stream` is false."""
    return await generation(request, "generate")


# ---------------------------------------------------------------- embeddings


async def embed_vectors(g: Gateway, route: Route, payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
    WAKE_NS.set(0)
    reply = await send(g, route, ad.EMBED_PATH, body=orjson.dumps(payload))
    if reply.status != 200:
        raise backend_error(reply.status, reply.body)
    try:
        return orjson.loads(reply.body), WAKE_NS.get()
    except orjson.JSONDecodeError:
        raise UpstreamError("status", "backend answered embeddings with something that is not JSON") from None


@router.post("/api/embed", openapi_extra=doc(t.EmbedRequest), response_model=t.EmbedResponse)
async def embed(request: Request) -> Response:
    """Embeddings for one string or a list of strings."""
    t0 = time.monotonic_ns()
    g = gw(request)
    body = await read_body(request)
    model = model_of(body)
    route = g.registry.resolve(model, Protocol.ollama)
    inputs = ad.embed_inputs(body)
    payload = ad.embed_request(inputs, body, route.config, model)
    if not inputs:
        return json_response({"model": model, "embeddings": []})
    data, load_ns = await embed_vectors(g, route, payload)
    durations = {"total_duration": time.monotonic_ns() - t0, "load_duration": load_ns}
    return json_response(ad.embed_response(data, model, durations))


@router.post("/api/embeddings", openapi_extra=doc(t.EmbeddingsRequest), response_model=t.EmbeddingsResponse)
async def embeddings(request: Request) -> Response:
    """Legacy single-prompt embeddings."""
    g = gw(request)
    body = await read_body(request)
    model = model_of(body)
    route = g.registry.resolve(model, Protocol.ollama)
    prompt = ad.embeddings_prompt(body)
    payload = ad.embed_request([prompt], body, route.config, model)
    if not prompt:
        return json_response({"embedding": []})
    data, _ = await embed_vectors(g, route, payload)
    vectors = ad.embed_response(data, model, {})["embeddings"]
    return json_response({"embedding": vectors[0] if vectors else []})


# ---------------------------------------------------------------- models


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.get("/api/version", response_model=t.VersionResponse)
@router.head("/api/version", include_in_schema=False)
async def version() -> Response:
    return json_response({"version": VERSION})


@router.get("/api/tags", response_model=t.TagsResponse)
@router.head("/api/tags", include_in_schema=False)
async def tags(request: Request) -> Response:
    """The models that are up (one entry per config, under its served name)."""
    cfgs = gw(request).registry.running_configs(Protocol.ollama)
    return json_response({"models": [ad.tags_entry(c, modified_ns(c)) for c in cfgs]})


@router.post("/api/show", openapi_extra=doc(t.ModelRequest), response_model=t.ShowResponse)
async def show(request: Request) -> Response:
    """Details of any configured model (running or not), from the config catalog."""
    g = gw(request)
    cfg = configured(g, model_of(await read_body(request)))
    return json_response(ad.show(cfg, modified_ns(cfg)))


async def loaded(g: Gateway, cfg: Config, backend: Backend) -> dict[str, Any] | None:
    """The ps entry of one backend if its model is in memory, from its lifecycle API."""
    now = time.time_ns()
    if backend.admin_url == backend.url:  # a bare vLLM without a supervisor: loaded while it answers
        return ad.ps_entry(cfg, None, now)
    try:
        state = await admin(g, backend, "GET", "/admin/lifecycle", timeouts=PROBE_TIMEOUTS)
    except UpstreamError:
        return None
    if state.get("state") != "ready":
        return None
    expires = state.get("expires_in_s")
    idle = state.get("idle_timeout_s") or 0
    if expires is None and idle:  # in use right now: the idle clock starts when it is released
        expires = float(idle)
    return ad.ps_entry(cfg, expires if idle else None, now)


@router.get("/api/ps", response_model=t.PsResponse)
async def ps(request: Request) -> Response:
    """The models loaded in memory right now (asked from each backend's lifecycle API)."""
    g = gw(request)
    pairs = [(c, b) for c in g.registry.running_configs(Protocol.ollama) for b in g.registry.running().get(c.name, ())]
    results = await asyncio.gather(*(loaded(g, c, b) for c, b in pairs))
    models: dict[str, dict[str, Any]] = {}
    for entry in results:
        if entry is not None:  # several replicas of one config: one entry
            models.setdefault(entry["name"], entry)
    return json_response({"models": list(models.values())})


@router.post("/api/pull", openapi_extra=doc(t.ModelRequest), response_model=t.ProgressResponse)
async def pull(request: Request) -> Response:
    """Nothing to download: a configured, running model is already there, so this reports success."""
    g = gw(request)
    body = await read_body(request)
    model = model_of(body)
    if not [c for c in g.registry.configs_for(model) if Protocol.ollama in c.protocols]:
        names = sorted({ad.tag_name(c) for c in g.registry.catalog if Protocol.ollama in c.protocols})
        raise GatewayError(f"pull model manifest: model '{model}' not found: this gateway serves only the models "
                           f"in its config catalog and cannot download others (configured: {', '.join(names)})",
                           status=404)
    g.registry.resolve(model, Protocol.ollama)  # configured but stopped: 503 that says how to start it
    steps = [{"status": "pulling manifest"}, {"status": "success"}]
    if ad.client_stream(body):
        return Response(b"".join(line(s) for s in steps), media_type=NDJSON)
    return json_response(steps[-1])


CATALOG_ONLY = ("models on this gateway come from its config catalog (configs/*.yaml) and are started with "
                "./start-service.sh")


def unsupported(what: str) -> GatewayError:
    return GatewayError(f"{what} is not supported by this gateway: {CATALOG_ONLY}", status=501)


@router.post("/api/push", response_model=t.ErrorResponse, status_code=501)
async def push() -> Response:
    raise unsupported("pushing a model")


@router.post("/api/create", response_model=t.ErrorResponse, status_code=501)
async def create() -> Response:
    raise unsupported("creating a model")


@router.post("/api/copy", response_model=t.ErrorResponse, status_code=501)
async def copy() -> Response:
    raise unsupported("copying a model")


@router.delete("/api/delete", response_model=t.ErrorResponse, status_code=501)
async def delete() -> Response:
    raise unsupported("deleting a model")


@router.post("/api/blobs/{digest}", response_model=t.ErrorResponse, status_code=501)
@router.head("/api/blobs/{digest}", include_in_schema=False)
async def blobs(digest: str) -> Response:
    raise unsupported("uploading model files (blobs)")
