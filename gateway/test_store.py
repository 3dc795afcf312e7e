"""The stores: Redis and in-process give the same answers; the resilient store survives a Redis restart.

Uses a real `redis-server` (Debian package, tests/apt-packages.txt) on a free loopback port.
`RedisServer` is also used by tests/test_hardening_*.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from gateway import store as store_mod
from gateway.store import InflightBoard, MemoryStore, Periodic, RedisStore, ResilientStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server (no persistence) that can be stopped and started again on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self.dir, "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    server = request.getfixturevalue("redis_server")
    s = RedisStore(server.url)
    await s.heartbeat()
    yield s
    await s.close()


async def test_requests_per_minute(store):
    assert [(await store.admit("k", 2, 0))[0] for _ in range(3)] == [0, 0, 1]
    assert await store.admit("other", 2, 0) == (0, 1)  # per key
    assert await store.admit("k", 0, 0) == (0, 1)  # no limit configured


async def test_leases_never_exceed_the_limit(store):
    assert await store.admit("k", 10, 0, want=4) == (0, 4)
    assert await store.admit("k", 10, 0, want=4) == (0, 4)
    assert await store.admit("k", 10, 0, want=4) == (0, 2)  # what is left of the minute
    assert await store.admit("k", 10, 0, want=4) == (1, 0)


async def test_tokens_per_minute_come_from_usage(store):
    assert await store.admit("k", 0, 100) == (0, 1)
    await store.add_usage("k", {"prompt_tokens": 60, "completion_tokens": 40, "requests": 1})
    assert await store.admit("k", 0, 100) == (2, 0)
    assert await store.usage("k") == {"prompt_tokens": 60, "completion_tokens": 40, "requests": 1}


async def test_slots(store):
    assert [await store.acquire("s", 2) for _ in range(3)] == [True, True, False]
    await store.release("s")
    assert await store.acquire("s", 2)
    assert await store.slots("s") == 2


async def test_inflight_is_summed_over_replicas(redis_server):
    a, b = RedisStore(redis_server.url, "a"), RedisStore(redis_server.url, "b")
    for s in (a, b):
        await s.heartbeat()
    assert await a.sync_inflight({"u1": 3, "u2": 0}) == {"u1": 3, "u2": 0}
    assert await b.sync_inflight({"u1": 1, "u2": 2}) == {"u1": 4, "u2": 2}
    # A replica that dies stops its heartbeat: its counts no longer count.
    await a.redis.delete(a.beat_prefix + "a")
    assert await b.sync_inflight({"u1": 1, "u2": 2}) == {"u1": 1, "u2": 2}
    await a.close()
    await b.close()


async def test_board_keeps_the_registry_view(redis_server):
    totals: dict[str, int] = {}
    store = ResilientStore(RedisStore(redis_server.url, "a"))
    await store.start()
    other = RedisStore(redis_server.url, "b")
    await other.heartbeat()
    await other.sync_inflight({"u1": 5})
    board = InflightBoard(store, totals)
    board.begin("u1")
    board.begin("u2")
    assert totals == {"u1": 1, "u2": 1}
    await board.sync(["u1", "u2"])
    assert totals == {"u1": 6, "u2": 1}
    board.end("u1")
    assert totals["u1"] == 5
    await store.close()
    await other.close()


async def resilient(url: str) -> ResilientStore:
    # A generous Redis timeout: a loaded CI machine can stall a round trip past a short one, and the store
    # would fall back to memory mid-test. A stopped redis-server is seen at once anyway (refused / reset).
    store = ResilientStore(RedisStore(url, "a", timeout_s=5))
    store.PROBE_EVERY_S = 0.1
    await store.start()
    return store


async def recovered(store: ResilientStore) -> None:
    """Wait until the store uses Redis again; a stall fails the test instead of hanging it."""
    for _ in range(1200):
        if store.kind == "redis":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("still on the in-process store after 60 s")


async def test_resilient_store_falls_back_and_recovers(redis_server, caplog):
    caplog.set_level(logging.WARNING, "gateway.store")
    store = await resilient(redis_server.url)
    await store.add_usage("k", {"requests": 1})
    assert store.kind == "redis"
    redis_server.stop()
    await store.add_usage("k", {"requests": 2})  # no error: counted in memory
    assert store.kind == "memory" and "redis unavailable" in caplog.text
    assert (await store.admit("k", 1, 0))[0] == 0 and (await store.admit("k", 1, 0))[0] == 1  # limits hold
    redis_server.start()
    await recovered(store)
    assert "redis is back" in caplog.text
    # Redis restarted empty: the usage counted during the outage moved over.
    assert (await store.usage("k"))["requests"] == 2
    await store.close()


async def test_slots_are_given_back_where_they_were_taken(redis_server):
    """Redis goes away and comes back with its data (a partition, a failover), while streams hold slots.
    Before: a Redis slot released meanwhile was released in memory and stayed taken in Redis for as long
    as the replica lived (its heartbeat kept it counted), so the key got 429s on every replica."""
    store = await resilient(redis_server.url)
    other = RedisStore(redis_server.url, "b")  # another replica's view
    gone, running = await store.acquire("s", 2), await store.acquire("s", 2)
    assert gone == running == "redis"
    await store.redis.redis.save()  # the restarted server loads this: Redis keeps its data over the outage
    redis_server.stop()
    await store.release("s", gone)  # cannot reach Redis
    assert store.kind == "memory"
    by_memory = await store.acquire("s", 2)
    assert by_memory == "memory"
    redis_server.start()
    await recovered(store)
    assert await other.slots("s") == 1  # the running stream's only; before: 2, both slots
    await store.release("s", by_memory)  # to memory, where it was taken: Redis still counts the running one
    assert await other.slots("s") == 1 and await store.memory.slots("s") == 0
    await store.release("s", running)
    assert await other.slots("s") == 0
    await other.close()
    await store.close()


async def test_an_acquire_whose_reply_was_lost_leaves_no_slot_behind(redis_server):
    store = await resilient(redis_server.url)
    other = RedisStore(redis_server.url, "b")
    await other.heartbeat()
    taken = store.redis.acquire

    async def reply_lost(name: str, limit: int) -> bool:  # the script ran; its answer never arrived
        await taken(name, limit)
        raise ConnectionError("reply lost")

    store.redis.acquire = reply_lost  # type: ignore[method-assign]
    slot = await store.acquire("s", 1)
    assert slot == "memory"  # the stream goes on, counted in memory
    del store.redis.acquire
    await recovered(store)
    assert await other.acquire("s", 1)  # before: Redis counted the lost acquire's slot while "a" lived
    await store.release("s", slot)
    await other.close()
    await store.close()


async def test_no_redis_url_means_memory(monkeypatch):
    from gateway.store import from_env

    monkeypatch.delenv("REDIS_URL", raising=False)
    store = from_env()
    assert store.kind == "memory" and store.redis is None
    assert await store.admit("k", 1, 0) == (0, 1)


class LosesOneCancel:
    """A call that, from its `from_call`-th call on, waits until cancelled and loses the first cancel it
    gets: what Python 3.11's asyncio.wait_for (around redis-py's socket writes) does when the cancel
    lands just as the write completes (CPython gh-86296), here made certain instead of a rare race."""

    def __init__(self, from_call: int = 1) -> None:
        self.from_call, self.calls, self.lost = from_call, 0, False
        self.waiting = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls < self.from_call:
            return
        self.waiting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost = True


async def test_periodic_stops_although_a_round_lost_its_cancel():
    round_ = LosesOneCancel()
    periodic = Periodic(lambda: 0)
    periodic.start(round_)
    await round_.waiting.wait()
    await periodic.stop()  # before: awaited forever the loop that went on to its next round
    assert round_.lost


async def test_resilient_store_closes_although_a_heartbeat_lost_its_cancel(monkeypatch):
    monkeypatch.setattr(store_mod, "HEARTBEAT_EVERY_S", 0)
    redis = RedisStore("redis://127.0.0.1:1/0")  # never reached: only its heartbeat is called
    beat = LosesOneCancel(from_call=2)  # the first heartbeat is start()'s own
    monkeypatch.setattr(redis, "heartbeat", beat)
    store = ResilientStore(redis)
    await store.start()
    await beat.waiting.wait()
    await store.close()  # before: awaited forever the heartbeat loop
    assert beat.lost


async def test_usage_moves_to_redis_once_and_nothing_counted_meanwhile_is_lost():
    """Recovery hands the outage's usage to Redis key by key: usage counted during the hand-over stays in
    memory, and a key Redis did not take stays too (for the next attempt), without counting twice."""

    class FlakyRedis:
        def __init__(self, store: ResilientStore) -> None:
            self.store, self.got = store, {}

        async def add_usage(self, key, counts, charge=True):
            await self.store.memory.add_usage("a", {"requests": 5})  # counted while the hand-over awaits
            if key == "b":
                raise ConnectionError("gone again")
            self.got[key] = counts

    store = ResilientStore(None)
    store.redis = FlakyRedis(store)
    await store.memory.add_usage("a", {"requests": 1})
    await store.memory.add_usage("b", {"requests": 2})
    with pytest.raises(ConnectionError):
        await store._move_usage()
    assert store.redis.got == {"a": {"requests": 1}}
    assert await store.memory.usage_all() == {"a": {"requests": 10}, "b": {"requests": 2}}
