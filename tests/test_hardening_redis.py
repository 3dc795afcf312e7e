"""Several gateway replicas on one Redis agree; Redis going away and coming back never stops them.

Two gateway apps (two replicas) run in-process against a real `redis-server` on a free port and two
fake vLLM replicas of one config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.test_store import RedisServer
from gateway.testing import FakeBackend
from tests.test_hardening_auth import KEY, bearer, chat, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(report):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer().start()
    report.real("redis-server (shared gateway state, restarted mid-test)")
    yield server
    server.cleanup()


async def until(condition, what: str, limit_s: float = 60) -> None:
    """Poll an (async) condition; a stall fails the test with a message instead of hanging it."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not (await condition() if asyncio.iscoroutinefunction(condition) else condition()):
        assert asyncio.get_running_loop().time() < deadline, f"still waiting for {what} after {limit_s:g} s"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def replicas(monkeypatch, redis: RedisServer, n: int = 2, **env: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    # A generous Redis timeout: a loaded CI machine can stall a round trip past a short one, and the replicas
    # would fall back to memory mid-test. A stopped redis-server is seen at once anyway (refused / reset).
    clean_env(monkeypatch, REDIS_URL=redis.url, GATEWAY_API_KEYS=KEY, REDIS_TIMEOUT_S="5", **env)
    fakes = [FakeBackend(chunks=40), FakeBackend(chunks=40)]
    urls = [await f.start() for f in fakes]
    clients = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            registry = Registry()
            registry.set_running({"tiny-llm": [Backend("tiny-llm", u, u) for u in urls]})
            app = create_app(registry)
            await stack.enter_async_context(app.router.lifespan_context(app))
            app.state.gw.extras["hardening"].board.SYNC_S = 0.05
            app.state.gw.extras["hardening"].store.PROBE_EVERY_S = 0.1
            c = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30))
            c.app, c.fakes = app, fakes  # type: ignore[attr-defined]
            clients.append(c)
        yield clients
    for f in fakes:
        await f.stop()


async def test_rate_limit_is_shared_by_replicas(monkeypatch, redis_server):
    async with replicas(monkeypatch, redis_server, GATEWAY_RATE_RPM="3") as (a, b):
        codes = [(await c.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code
                 for c in (a, b, a, b)]
        assert codes == [200, 200, 200, 429]


async def test_usage_and_stream_slots_are_shared(monkeypatch, redis_server):
    async with replicas(monkeypatch, redis_server, GATEWAY_MAX_STREAMS_PER_KEY="1") as (a, b):
        slow = chat(stream=True, _delay=0.05)
        first = asyncio.create_task(a.post("/v1/chat/completions", json=slow, headers=bearer(KEY)))
        h = a.app.state.gw.extras["hardening"]
        slot = f"streams:{h.keys.check(KEY).id}"

        async def held() -> bool:
            return bool(await h.store.slots(slot))

        await until(held, "the first stream to take its slot")
        r = await b.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(KEY))
        assert r.status_code == 429  # the slot is held on the other replica
        await first
        ua = (await a.get("/gateway/usage", headers=bearer(KEY))).json()
        ub = (await b.get("/gateway/usage", headers=bearer(KEY))).json()
        assert ua["store"] == "redis" and ua["usage"]["requests"] >= 3 and ub["usage"] == ua["usage"] | ub["usage"]


async def test_least_loaded_routing_across_replicas(monkeypatch, redis_server):
    async with replicas(monkeypatch, redis_server) as (a, b):
        held = [asyncio.create_task(a.post("/v1/chat/completions", json=chat(stream=True, _delay=0.05),
                                           headers=bearer(KEY))) for _ in range(3)]
        fakes = a.fakes
        await until(lambda: sum(len(f.requests) for f in fakes) >= 3, "3 streams to reach the backends")
        busy = max(fakes, key=lambda f: len(f.requests))
        idle = min(fakes, key=lambda f: len(f.requests))
        await asyncio.sleep(0.3)  # a few board syncs
        registry_b = b.app.state.gw.registry
        assert registry_b.inflight[busy.url] > registry_b.inflight.get(idle.url, 0)
        before = len(idle.requests)
        assert (await b.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        assert len(idle.requests) == before + 1  # replica B sent it to the backend A is not loading
        await asyncio.gather(*held)


async def test_redis_restart_falls_back_and_recovers(monkeypatch, redis_server, caplog):
    caplog.set_level(logging.WARNING, "gateway.store")
    async with replicas(monkeypatch, redis_server, n=1, GATEWAY_RATE_RPM="1000") as (a,):
        h = a.app.state.gw.extras["hardening"]
        assert (await a.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        redis_server.stop()
        for _ in range(5):  # Redis is gone: requests go on, answered from the in-process store
            assert (await a.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        await h.usage.flush()  # (admission permits are leased: the usage flush is what meets the dead Redis)
        assert h.store.kind == "memory" and "redis unavailable" in caplog.text
        redis_server.start()
        for _ in range(100):
            if h.store.kind == "redis":
                break
            await asyncio.sleep(0.05)
        assert h.store.kind == "redis" and "redis is back" in caplog.text
        assert (await a.post("/v1/chat/completions", json=chat(), headers=bearer(KEY))).status_code == 200
        usage = (await a.get("/gateway/usage", headers=bearer(KEY))).json()
        # the restarted Redis holds what was counted during the outage and after it
        assert usage["store"] == "redis" and usage["usage"]["requests"] >= 6
