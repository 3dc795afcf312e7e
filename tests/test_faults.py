"""Faults between the gateway and its backends, over real sockets (uvicorn + httptools, aiohttp backends).

- the backend dies mid-stream: SSE clients get an error event and [DONE], Ollama clients an {"error"} line;
- the backend restarts: the next request succeeds, the gateway is not restarted;
- the backend is slow: the client gets a timeout error and the upstream request is cancelled;
- the client disconnects: the upstream request is cancelled and its slot freed.

Each client read has a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from aiohttp import web

from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.testing import FakeBackend
from tests.test_hardening_auth import KEY, bearer, chat, clean_env, ollama_chat

CHAT = "/v1/chat/completions"
CLIENT_TIMEOUT = httpx.Timeout(10.0)  # far above any expected answer; only there so that a hang fails


class CancellableBackend(FakeBackend):
    """FakeBackend whose handlers are cancelled when the gateway drops the connection (aiohttp's
    handler_cancellation), so a test can see that the upstream request really stopped."""

    dropped: int = 0
    delay: float = 0.0  # between chunks, for requests that cannot carry `_delay` (Ollama's)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.url = f"http://{host}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super().chat(request)
        except asyncio.CancelledError:
            self.dropped += 1
            raise

    async def stream(self, request: web.Request, body: dict[str, Any], chat: bool, die: bool) -> web.StreamResponse:
        if self.delay:
            body.setdefault("_delay", self.delay)
        return await super().stream(request, body, chat, die)


@contextlib.asynccontextmanager
async def served(monkeypatch, backend_url: str, **env: str) -> AsyncIterator[tuple[str, Any]]:
    """The gateway on a real loopback socket (uvicorn with uvloop's sibling settings: httptools)."""
    clean_env(monkeypatch, **env)
    registry = Registry()
    registry.set_running({"tiny-llm": [Backend("tiny-llm", backend_url, backend_url)]})
    app = create_app(registry)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http="httptools", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        await task
        sock.close()


async def sse_events(r: httpx.Response) -> list[str]:
    text = "".join([chunk async for chunk in r.aiter_text()])
    return [e for e in text.split("\n\n") if e]


async def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@pytest.fixture
async def backend():
    fake = CancellableBackend(chunks=20)
    await fake.start()
    yield fake
    await fake.stop()


# ---------------------------------------------------------------- the backend dies mid-stream
async def test_backend_dies_mid_stream_sse(monkeypatch, backend, report):
    async with served(monkeypatch, backend.url) as (url, _), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        t0 = time.monotonic()
        async with c.stream("POST", url + CHAT, json=chat("die", stream=True)) as r:
            events = await sse_events(r)
        elapsed = time.monotonic() - t0
    assert r.status_code == 200 and events[-1] == "data: [DONE]"
    err = orjson.loads(events[-2].removeprefix("data: "))["error"]
    assert err["code"] == "upstream_broken" and err["type"] == "upstream_error"
    print(f"\n[faults] SSE client saw the error event and [DONE] {elapsed * 1000:.0f} ms after the request")
    report.real("fault: backend dies mid-stream (SSE error event + [DONE])")


async def test_backend_dies_mid_stream_ollama(monkeypatch, backend):
    async with served(monkeypatch, backend.url) as (url, _), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        async with c.stream("POST", url + "/api/chat", json=ollama_chat("die", stream=True)) as r:
            lines = [orjson.loads(line) async for line in r.aiter_lines() if line]
    assert r.status_code == 200 and "error" in lines[-1] and isinstance(lines[-1]["error"], str)
    assert all("error" not in line for line in lines[:-1])


# ---------------------------------------------------------------- the backend restarts
async def test_backend_restart_needs_no_gateway_restart(monkeypatch, backend):
    port = int(backend.url.rsplit(":", 1)[1])
    async with served(monkeypatch, backend.url) as (url, _), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        assert (await c.post(url + CHAT, json=chat())).status_code == 200  # leaves a pooled connection
        await backend.stop()
        r = await c.post(url + CHAT, json=chat())
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect"
        again = CancellableBackend(chunks=20)
        await again.start(port=port)
        try:
            assert (await c.post(url + CHAT, json=chat())).status_code == 200
            async with c.stream("POST", url + CHAT, json=chat(stream=True)) as r:
                assert (await sse_events(r))[-1] == "data: [DONE]"
        finally:
            await again.stop()


async def test_stale_pooled_connection_is_retried(monkeypatch, backend):
    """The backend restarts between two requests: the pooled keep-alive connection is dead, the
    request must still succeed (it never reached the old process)."""
    port = int(backend.url.rsplit(":", 1)[1])
    async with served(monkeypatch, backend.url) as (url, _), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        assert (await c.post(url + CHAT, json=chat())).status_code == 200
        await backend.stop()
        again = CancellableBackend(chunks=20)
        await again.start(port=port)
        try:
            assert (await c.post(url + CHAT, json=chat())).status_code == 200
        finally:
            await again.stop()


# ---------------------------------------------------------------- the backend is slow
async def test_slow_backend_times_out_and_is_cancelled(monkeypatch, backend):
    env = {"UPSTREAM_READ_TIMEOUT_VLLM_S": "0.3"}
    async with served(monkeypatch, backend.url, **env) as (url, app), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        r = await c.post(url + CHAT, json=chat("slow:5"))
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        r = await c.post(url + "/api/chat", json=ollama_chat("slow:5"))
        assert r.status_code == 504 and "error" in r.json()
        assert await wait_for(lambda: backend.dropped == 2)  # the backend saw both requests go away
        assert app.state.gw.registry.inflight.get(backend.url, 0) == 0


async def test_backend_silent_mid_stream_times_out(monkeypatch, backend):
    env = {"UPSTREAM_READ_TIMEOUT_VLLM_S": "0.3"}
    async with served(monkeypatch, backend.url, **env) as (url, _), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        async with c.stream("POST", url + CHAT, json=chat(stream=True, _delay=5)) as r:
            events = await sse_events(r)
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    assert await wait_for(lambda: backend.cancelled == 1)


# ---------------------------------------------------------------- the client disconnects
@pytest.mark.parametrize("path", [CHAT, "/api/chat"])
async def test_client_disconnect_cancels_upstream_and_frees_the_slot(monkeypatch, backend, path):
    env = {"GATEWAY_API_KEYS": KEY, "GATEWAY_MAX_STREAMS_PER_KEY": "1"}
    body = chat(stream=True) if path == CHAT else ollama_chat(stream=True)
    backend.delay = 0.2
    async with served(monkeypatch, backend.url, **env) as (url, app), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        h = app.state.gw.extras["hardening"]
        slot = f"streams:{h.keys.check(KEY).id}"
        async with c.stream("POST", url + path, json=body, headers=bearer(KEY)) as r:
            assert r.status_code == 200
            async for _ in r.aiter_bytes():
                break  # got the first chunk; now hang up
        assert await wait_for(lambda: backend.cancelled == 1)
        assert await wait_for(lambda: app.state.gw.registry.inflight.get(backend.url, 0) == 0)
        for _ in range(100):
            if await h.store.slots(slot) == 0:
                break
            await asyncio.sleep(0.02)
        assert await h.store.slots(slot) == 0
        # the freed slot is usable at once
        async with c.stream("POST", url + CHAT, json=chat(stream=True), headers=bearer(KEY)) as r:
            assert r.status_code == 200 and (await sse_events(r))[-1] == "data: [DONE]"


async def test_client_disconnect_cancels_a_non_streamed_request(monkeypatch, backend):
    async with served(monkeypatch, backend.url) as (url, app), httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as c:
        request = asyncio.create_task(c.post(url + CHAT, json=chat("slow:5")))
        assert await wait_for(lambda: len(backend.requests) == 1)
        request.cancel()  # the client hangs up while the backend is still working
        with contextlib.suppress(asyncio.CancelledError):
            await request
        assert await wait_for(lambda: backend.dropped == 1)
        assert await wait_for(lambda: app.state.gw.registry.inflight.get(backend.url, 0) == 0)
        assert (await c.post(url + CHAT, json=chat())).status_code == 200
