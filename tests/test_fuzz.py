"""Schemathesis against the gateway's own OpenAPI document: every operation of every protocol (OpenAI,
Ollama, MT Photos, health, usage), valid and invalid inputs, zero 5xx and zero schema violations.

The gateway runs for real (uvicorn, real sockets) in front of fake backends on loopback, so the run is
fast and deterministic (derandomized Hypothesis). Half of the generated bodies that name a model get
a running model's name, so requests also travel to the backend and back, not only into 404s.
The number of cases is printed at the end (and recorded in the run report).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
import uvloop
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.testing import FakeBackend
from tests.test_hardening_auth import ENV_NAMES, FakeMTPhotos

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))  # per operation and generation mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODELS = ("tiny", "tiny-llm")
cases = {"n": 0, "by_status": {}}


class StrictFakeBackend(FakeBackend):
    """Refuses what it cannot parse with a 400, as vLLM does (the plain fake would answer 500, which
    the gateway rightly reports as a 502 and this run would count against the gateway)."""

    def app(self) -> web.Application:
        app = super().app()
        # The supervisor API of a vLLM service (Ollama's load/unload/keep_alive use it).
        for path in ("/admin/load", "/admin/unload", "/admin/idle-timeout"):
            app.router.add_post(path, self.lifecycle)
        app.router.add_get("/admin/lifecycle", self.lifecycle)
        return app

    async def lifecycle(self, request: web.Request) -> web.Response:
        return web.json_response({"state": "ready", "idle_timeout_s": 0})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super().chat(request)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            return web.json_response({"error": {"message": "bad request", "type": "BadRequestError", "param": None,
                                                "code": 400}}, status=400)

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            return await super().embeddings(request)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            return web.json_response({"error": {"message": "bad request", "type": "BadRequestError", "param": None,
                                                "code": 400}}, status=400)


class Stack:
    """Fake vLLM + fake MT Photos + the gateway, on one event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # as in production (`python -m gateway`)
        self.ready = threading.Event()
        self.url = ""
        self.app: Any = None
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),), daemon=True)

    async def main(self) -> None:
        fake, mt = StrictFakeBackend(chunks=3), FakeMTPhotos()
        url, mt_url = await fake.start(), await mt.start()
        registry = Registry()
        registry.set_running({"tiny-llm": [Backend("tiny-llm", url, url)],
                              "mt-photos-cpu": [Backend("mt-photos-cpu", mt_url, mt_url)]})
        self.app = create_app(registry)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, http="httptools", log_level="error", access_log=False))
        serving = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)
        self.ready.set()
        await serving
        await fake.stop()
        await mt.stop()

    def start(self) -> Stack:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the gateway did not start")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def stack(report) -> Iterator[Stack]:
    saved = {n: os.environ.pop(n) for n in ENV_NAMES if n in os.environ}  # an open gateway, default limits
    s = Stack().start()
    yield s
    s.stop()
    os.environ.update(saved)
    by_status = dict(sorted(cases["by_status"].items()))
    print(f"\n[fuzz] {cases['n']} cases; responses by status: {by_status}")
    report.real(f"fuzz: schemathesis, {cases['n']} cases over the gateway's OpenAPI (all protocols): {by_status}")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# The document of an app wired like the one under test (the document does not depend on what runs).
schema = schemathesis.openapi.from_dict(create_app(Registry()).openapi())
schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True)


@schema.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
def test_gateway_openapi(case, stack, session):
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and cases["n"] % 2:
        case.body["model"] = MODELS[cases["n"] % 4 // 2]  # reach the backend too
    cases["n"] += 1
    response = case.call(base_url=stack.url, session=session, timeout=30)
    cases["by_status"][response.status_code] = cases["by_status"].get(response.status_code, 0) + 1
    documented_501 = response.status_code == 501 and "501" in case.operation.definition.raw.get("responses", {})
    checks = CHECKS[1:] if documented_501 else CHECKS  # Ollama's "not implemented" (push, create...) is its API
    case.validate_response(response, checks=checks)
