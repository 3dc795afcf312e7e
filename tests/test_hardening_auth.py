"""API keys and limits through the whole gateway app, in each protocol's own error shape.

The app runs in-process (ASGI) in front of fake backends on loopback: the fake vLLM of
gateway/testing.py and a small fake MT Photos service that records the `api-key` it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.testing import FakeBackend

KEY, OTHER = "sk-test-alpha-0001", "sk-test-beta-0002"
ENV_NAMES = ("GATEWAY_API_KEYS", "GATEWAY_API_KEYS_FILE", "API_AUTH_KEY", "REDIS_URL", "GATEWAY_RATE_RPM",
             "GATEWAY_RATE_TPM", "GATEWAY_MAX_STREAMS_PER_KEY", "GATEWAY_MAX_BODY_BYTES",
             "GATEWAY_MAX_IMAGE_BODY_BYTES")


class FakeMTPhotos:
    """Answers like the vision service and remembers the api-key it was sent."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("api-key"))
        await request.read()
        if request.path == "/ocr":
            return web.json_response({"result": {"texts": ["hi"], "scores": [0.9], "boxes": []}})
        if request.path == "/v1/images/generations":  # plays the image service too
            return web.json_response({"created": 1, "data": [{"b64_json": "iVBO"}, {"b64_json": "iVBO"}]})
        return web.json_response({"result": "pass"})

    async def start(self) -> str:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def clean_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@contextlib.asynccontextmanager
async def gateway(monkeypatch: pytest.MonkeyPatch, chunks: int = 4, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process gateway with tiny-llm on a FakeBackend and mt-photos-cpu on FakeMTPhotos."""
    clean_env(monkeypatch, **env)
    fake, mt = FakeBackend(chunks=chunks), FakeMTPhotos()
    url, mt_url = await fake.start(), await mt.start()
    registry = Registry()
    registry.set_running({"tiny-llm": [Backend("tiny-llm", url, url)],
                          "mt-photos-cpu": [Backend("mt-photos-cpu", mt_url, mt_url)],
                          "tiny-flux": [Backend("tiny-flux", mt_url, mt_url)]})
    app = create_app(registry)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as c:
                c.fake, c.mt, c.app = fake, mt, app  # type: ignore[attr-defined]
                yield c
    finally:
        await fake.stop()
        await mt.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(content: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}


def ollama_chat(content: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "stream": False, **kw}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- keys
async def test_openai_key_missing_wrong_right(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=f"{KEY},{OTHER}") as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.json()["error"]["code"] == "invalid_api_key"
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer("sk-wrong"))
        assert r.status_code == 401 and "sk-wrong" not in r.text
        assert (await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        assert (await c.get("/v1/models", headers=bearer(OTHER))).status_code == 200
        assert (await c.get("/v1/models")).status_code == 401


async def test_ollama_key_in_ollama_shape(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY) as c:
        r = await c.post("/api/chat", json=ollama_chat())
        assert r.status_code == 401 and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
        r = await c.post("/api/chat", json=ollama_chat(), headers=bearer(KEY))
        assert r.status_code == 200 and r.json()["done"] is True
        # what Ollama clients probe first stays open
        assert (await c.get("/")).status_code == 200 and (await c.get("/api/version")).status_code == 200


async def test_mtphotos_api_key_header(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY) as c:
        r = await c.post("/check")
        assert r.status_code == 401 and set(r.json()) == {"detail"}
        r = await c.post("/check", headers={"api-key": KEY})
        assert r.status_code == 200 and r.json() == {"result": "pass"}
        # the vision service gets its own key (default), never the gateway key
        assert c.mt.keys == ["mt_photos_ai_extra"]


async def test_mtphotos_own_key_setting_stays_valid(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY, API_AUTH_KEY="mt-secret") as c:
        r = await c.post("/check", headers={"api-key": "mt-secret"})
        assert r.status_code == 200 and c.mt.keys == ["mt-secret"]
        r = await c.post("/check", headers={"api-key": KEY})
        assert r.status_code == 200 and c.mt.keys[-1] == "mt-secret"
        # MT Photos' key opens only MT Photos routes
        assert (await c.post("/v1/chat/completions", json=chat(), headers=bearer("mt-secret"))).status_code == 401


async def test_without_keys_mtphotos_key_passes_untouched(monkeypatch):
    async with gateway(monkeypatch) as c:
        assert (await c.post("/check", headers={"api-key": "whatever"})).status_code == 200
        assert c.mt.keys == ["whatever"]


async def test_public_paths_need_no_key(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path


async def test_keys_never_in_logs_or_metrics(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY, GATEWAY_RATE_RPM="1") as c:
        await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))
        await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))  # 429
        await c.post("/v1/chat/completions", json=chat(), headers=bearer("sk-leaked?"))
        metrics = (await c.get("/metrics")).text
    for secret in (KEY, "sk-leaked?"):
        assert secret not in caplog.text and secret not in metrics


# ---------------------------------------------------------------- limits
async def test_body_size_limit_per_protocol(monkeypatch):
    env = {"GATEWAY_MAX_BODY_BYTES": "1000", "GATEWAY_MAX_IMAGE_BODY_BYTES": "5000"}
    async with gateway(monkeypatch, **env) as c:
        r = await c.post("/v1/chat/completions", json=chat("x" * 2000))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = await c.post("/api/chat", json=ollama_chat("x" * 2000))
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        # image routes have their own limit
        files = {"file": ("a.png", b"\x89PNG" + b"0" * 2000, "image/png")}
        assert (await c.post("/ocr", files=files, headers={"api-key": "k"})).status_code == 200
        files = {"file": ("a.png", b"\x89PNG" + b"0" * 6000, "image/png")}
        r = await c.post("/ocr", files=files, headers={"api-key": "k"})
        assert r.status_code == 413 and set(r.json()) == {"detail"}


async def test_chunked_body_over_the_limit(monkeypatch):
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 500

    async with gateway(monkeypatch, GATEWAY_MAX_BODY_BYTES="1000") as c:
        r = await c.post("/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


async def test_requests_per_minute_429_with_retry_after(monkeypatch):
    labels = {"protocol": "ollama", "limit": "requests"}
    before = sample("modelplat_gateway_rate_limited_total", **labels)
    async with gateway(monkeypatch, GATEWAY_API_KEYS=f"{KEY},{OTHER}", GATEWAY_RATE_RPM="2") as c:
        for _ in range(2):
            assert (await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        r = await c.post("/api/chat", json=ollama_chat(), headers=bearer(KEY))
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60 and "error" in r.json()
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        # another key has its own budget
        assert (await c.post("/v1/chat/completions", json=chat(), headers=bearer(OTHER))).status_code == 200
    assert sample("modelplat_gateway_rate_limited_total", **labels) == before + 1


async def test_tokens_per_minute_and_usage_accounting(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY, GATEWAY_RATE_TPM="60", chunks=4) as c:
        h = c.app.state.gw.extras["hardening"]
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))  # usage 5 + 4
        assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(KEY))  # streamed usage
        assert r.text.endswith("data: [DONE]\n\n")
        r = await c.post("/api/chat", json=ollama_chat(), headers=bearer(KEY))
        assert r.status_code == 200
        await c.post("/ocr", files={"file": ("a.png", b"\x89PNG", "image/png")}, headers={"api-key": KEY})
        r = await c.post("/v1/images/generations", json={"model": "tiny-flux", "prompt": "a cat", "n": 2},
                         headers=bearer(KEY))
        assert r.status_code == 200
        usage = (await c.get("/gateway/usage", headers=bearer(KEY))).json()  # counts itself too
        assert usage["usage"]["requests"] == 6 and usage["usage"]["ocr_calls"] == 1 and usage["usage"]["images"] == 2
        assert usage["usage"]["prompt_tokens"] >= 15 and usage["usage"]["completion_tokens"] >= 12
        assert usage["key_id"] != KEY and usage["store"] == "memory"
        await h.usage.flush()
        await h.store.add_usage(usage["key_id"], {"completion_tokens": 100})  # spend the rest of the minute
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))
        assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


async def test_concurrent_streams_per_key(monkeypatch):
    async with gateway(monkeypatch, GATEWAY_API_KEYS=KEY, GATEWAY_MAX_STREAMS_PER_KEY="1", chunks=20) as c:
        h = c.app.state.gw.extras["hardening"]
        slow = chat(stream=True, _delay=0.05)
        first = asyncio.create_task(c.post("/v1/chat/completions", json=slow, headers=bearer(KEY)))
        while not await h.store.slots(f"streams:{h.keys.check(KEY).id}"):
            await asyncio.sleep(0.01)
        r = await c.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(KEY))
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        r = await c.post("/api/chat", json=ollama_chat(stream=True), headers=bearer(KEY))
        assert r.status_code == 429 and "error" in r.json()
        assert (await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        assert (await first).text.endswith("data: [DONE]\n\n")
        await asyncio.sleep(0.05)  # the slot is released by a task right after the stream closes
        r = await c.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(KEY))
        assert r.status_code == 200


async def test_prompt_longer_than_the_model_is_400(monkeypatch):
    async with gateway(monkeypatch) as c:
        r = await c.post("/v1/chat/completions", json=chat("word " * 3000))
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        r = await c.post("/api/generate", json={"model": "tiny", "prompt": "word " * 3000, "stream": False})
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]
        assert c.fake.requests == []  # nothing reached the backend
