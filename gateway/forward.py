"""Sending one request to the backend a route chose, for every protocol module.

Counts in-flight requests per backend (least-loaded routing), applies the engine's timeouts, and
wakes a lazily loaded vLLM backend: when its data port refuses connections but its supervisor
answers, the gateway asks the supervisor to load the model and tries once more.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import orjson

from gateway import auth, limits, metrics
from gateway.configs import Engine
from gateway.context import Gateway
from gateway.errors import UpstreamError
from gateway.registry import Backend, Route
from gateway.upstream import TIMEOUTS, Reply, Stream, Timeouts, timeouts_for

JSON_HEADERS = {"Content-Type": "application/json"}
LOAD_TIMEOUTS = Timeouts(connect=5, read=1800)  # a 70B checkpoint can take many minutes to load
# Nanoseconds this request spent waking a backend (Ollama reports it as load_duration); per request task.
WAKE_NS: contextvars.ContextVar[int] = contextvars.ContextVar("wake_ns", default=0)


async def open_stream(
    gw: Gateway, route: Route, path: str, *, body: bytes | None = None, method: str = "POST",
    headers: Mapping[str, str] | None = None, data: aiohttp.FormData | None = None, stream: bool | None = None,
) -> Stream:
    """Open a backend request; the returned stream must be read or closed (`read()` and `chunks()` close it).

    Before anything is sent: the prompt's length is checked against the model (400), and a streamed
    request takes one of the caller's stream slots (429). `stream` says whether this is a streamed
    request; None = look for `"stream":true` in the body (what orjson writes). Until the stream
    closes, it counts as in flight on its backend and holds its slot.
    """
    metrics.note_route(route)
    h = gw.extras.get("hardening")
    estimate = limits.check_prompt(h, route.config, path, body) if route.config.engine is Engine.vllm else 0
    slot = await limits.stream_slot(h, lambda: stream if stream is not None else _streamed(body))
    done = _in_flight(gw, route.backend, slot)
    try:
        opened = await _open(gw, route, path, body, method, headers, data)
    except BaseException:
        done()
        raise
    opened.prompt_estimate = estimate
    opened.on_close(done)
    return opened


def _streamed(body: bytes | None) -> bool:
    return body is not None and b'"stream":true' in body


def _in_flight(gw: Gateway, backend: Backend, slot: limits.StreamSlot | None) -> Callable[[], None]:
    """Count the request on its backend; the returned function undoes it (and frees the slot)."""
    h = gw.extras.get("hardening")
    board = h.board if h is not None else None
    if board is not None:
        board.begin(backend.url)
    else:
        gw.registry.begin(backend)

    def done() -> None:
        if board is not None:
            board.end(backend.url)
        else:
            gw.registry.end(backend)
        if slot is not None:
            slot.release()

    return done


async def _open(gw: Gateway, route: Route, path: str, body: bytes | None, method: str,
                headers: Mapping[str, str] | None, data: aiohttp.FormData | None) -> Stream:
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
    stream = await open_stream(gw, route, path, body=body, method=method, headers=headers, data=data, stream=False)
    reply = Reply(stream.status, stream.headers, await stream.read())
    metrics.observe_reply(reply.status, reply.body)
    if reply.status == 200 and route.config.engine is Engine.vllm:
        account(gw, metrics.usage_of(reply.body) or (stream.prompt_estimate, 0))
    return reply


def account(gw: Gateway, tokens: tuple[int, int]) -> None:
    h = gw.extras.get("hardening")
    if h is not None:
        h.usage.add(auth.CURRENT.get().id, prompt_tokens=tokens[0], completion_tokens=tokens[1])


async def relay_chunks(gw: Gateway, backend: Backend, stream: Stream) -> AsyncIterator[bytes]:
    """Chunks as they come, untouched. Per chunk the only work is counting SSE events (`data: `), the
    completion-token estimate for streams that carry no `usage` (vLLM sends it only on request)."""
    events = 0
    prev = last = b""
    try:
        async for chunk in metrics.metered(stream.chunks()):
            events += chunk.count(b"data: ")
            prev, last = last, chunk
            yield chunk
    finally:
        stream.close()
        # Also on failure or disconnect: what was generated so far was work done for this caller.
        usage = metrics.usage_of(prev + last) if b'"usage"' in prev + last else None
        account(gw, usage or (stream.prompt_estimate, max(0, events - 1)))


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
    t0 = time.monotonic_ns()
    try:
        await admin(gw, backend, "POST", "/admin/load", timeouts=LOAD_TIMEOUTS)
    except UpstreamError as e:
        msg = f"backend '{backend.config}' is down and could not be woken: {e.message}"
        raise UpstreamError("connect", msg) from None
    finally:
        WAKE_NS.set(WAKE_NS.get() + time.monotonic_ns() - t0)
