"""Sending one request to the backend a route chose, for every protocol module.

Counts in-flight requests per backend (least-loaded routing), applies the engine's timeouts, and
wakes a lazily loaded vLLM backend: when its data port refuses connections but its supervisor
answers, the gateway asks the supervisor to load the model and tries once more.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson

from gateway.context import Gateway
from gateway.errors import UpstreamError
from gateway.registry import Backend, Route
from gateway.upstream import TIMEOUTS, Reply, Stream, Timeouts, timeouts_for

JSON_HEADERS = {"Content-Type": "application/json"}
LOAD_TIMEOUTS = Timeouts(connect=5, read=1800)  # a 70B checkpoint can take many minutes to load


async def open_stream(
    gw: Gateway, route: Route, path: str, *, body: bytes | None = None, method: str = "POST",
    headers: Mapping[str, str] | None = None, data: aiohttp.FormData | None = None,
) -> Stream:
    url = route.backend.url + path
    timeouts = timeouts_for(route.config.engine)
    hdrs = headers if headers is not None else JSON_HEADERS
    try:
        return await gw.upstream.open_stream(method, url, body=body, headers=hdrs, timeouts=timeouts, data=data)
    except UpstreamError as e:
        if e.kind != "connect" or route.backend.admin_url == route.backend.url:
            raise
        await wake(gw, route.backend)
        return await gw.upstream.open_stream(method, url, body=body, headers=hdrs, timeouts=timeouts, data=data)


async def send(
    gw: Gateway, route: Route, path: str, *, body: bytes | None = None, method: str = "POST",
    headers: Mapping[str, str] | None = None, data: aiohttp.FormData | None = None,
) -> Reply:
    with inflight(gw, route.backend):
        stream = await open_stream(gw, route, path, body=body, method=method, headers=headers, data=data)
        return Reply(stream.status, stream.headers, await stream.read())


@contextlib.contextmanager
def inflight(gw: Gateway, backend: Backend):
    gw.registry.begin(backend)
    try:
        yield
    finally:
        gw.registry.end(backend)


async def relay_chunks(gw: Gateway, backend: Backend, stream: Stream) -> AsyncIterator[bytes]:
    """Chunks as they come; the in-flight count lasts as long as the stream."""
    gw.registry.begin(backend)
    try:
        async for chunk in stream.chunks():
            yield chunk
    finally:
        gw.registry.end(backend)
        stream.close()


async def admin(gw: Gateway, backend: Backend, method: str, path: str, payload: object = None,
                timeouts: Timeouts = TIMEOUTS[None]) -> dict:
    """Call a backend's admin API (lifecycle); returns its JSON object."""
    body = orjson.dumps(payload) if payload is not None else None
    reply = await gw.upstream.request(method, backend.admin_url + path, body=body, headers=JSON_HEADERS,
                                      timeouts=timeouts)
    if reply.status >= 400:
        raise UpstreamError("status", f"{backend.config}: {path} answered {reply.status}", status=502)
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise UpstreamError("status", f"{backend.config}: {path} did not answer JSON", status=502) from None
    return data if isinstance(data, dict) else {"value": data}


async def wake(gw: Gateway, backend: Backend) -> None:
    """Ask a backend's supervisor to load its model and wait until it is ready."""
    try:
        await admin(gw, backend, "POST", "/admin/load", timeouts=LOAD_TIMEOUTS)
    except UpstreamError as e:
        msg = f"backend '{backend.config}' is down and could not be woken: {e.message}"
        raise UpstreamError("connect", msg) from None
