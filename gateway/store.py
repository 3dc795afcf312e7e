"""Shared gateway state: rate-limit windows, usage totals, concurrency slots, backend in-flight counts.

With `REDIS_URL` every gateway replica reads and writes the same Redis, so limits and least-loaded
routing hold across replicas. Without it, `MemoryStore` gives the same behaviour inside one process.
`ResilientStore` puts the two together: when Redis goes away the gateway keeps serving from memory
(logged once), probes Redis in the background, and switches back when it returns (logged once).

Counts that belong to one replica (slots, in-flight) are kept per replica (a hash field per replica
id) and only replicas whose heartbeat key is alive are summed, so a crashed replica's counts vanish
with its heartbeat instead of leaking forever. A slot is given back to the store that granted it; a
Redis slot given back while Redis is away is settled when it returns (`ResilientStore._settle_slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

log = logging.getLogger("gateway.store")
T = TypeVar("T")

WINDOW_S = 60  # rate limits count per calendar minute (fixed windows, aligned across replicas)
HEARTBEAT_TTL_S = 15
HEARTBEAT_EVERY_S = 5
PREFIX = "modelplat:gw:"

# Admission: tokens already used this minute, then up to `want` request permits (a lease) unless the
# minute's requests are used up. Returns {verdict, permits}: verdict 0 = allowed, 1 = requests per
# minute exceeded, 2 = tokens per minute exceeded.
ADMIT_LUA = """
local rpm, tpm, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tpm then return {2, 0} end
if rpm <= 0 then return {0, want} end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= rpm then return {1, 0} end
local take = math.min(want, rpm - used)
redis.call('INCRBY', KEYS[1], take)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {0, take}
"""

# The live total of a per-replica hash: fields of replicas without a heartbeat are dropped.
_SUM_LIVE = """
local function live_total(key, beat)
  local vals = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #vals, 2 do
    if redis.call('EXISTS', beat .. vals[i]) == 1 then total = total + tonumber(vals[i + 1])
    else redis.call('HDEL', key, vals[i]) end
  end
  return total
end
"""
# Take one slot if the live total is under the limit: 1 = taken, 0 = full.
ACQUIRE_LUA = _SUM_LIVE + """
if live_total(KEYS[1], ARGV[3]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""
RELEASE_LUA = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
# Publish this replica's counts (ARGV: replica, beat prefix, then url/count pairs), return all live totals.
INFLIGHT_LUA = _SUM_LIVE + """
local out = {}
for i = 3, #ARGV, 2 do
  local key = KEYS[(i - 1) / 2]
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', key, ARGV[1], ARGV[i + 1])
  else redis.call('HDEL', key, ARGV[1]) end
  out[#out + 1] = live_total(key, ARGV[2])
end
return out
"""


def window_now(now: float | None = None) -> tuple[int, float]:
    """(index of the current window, seconds until it ends)."""
    now = time.time() if now is None else now
    return int(now // WINDOW_S), WINDOW_S - (now % WINDOW_S)


def retry_after(now: float | None = None) -> int:
    return max(1, math.ceil(window_now(now)[1]))


STOP_RETRY_S = 0.1  # how long one cancel of a background task is given before the next
STOP_LIMIT_S = 10.0  # after this, a background task that will not end is logged and left behind


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop and wait, boundedly, until it has ended.

    One cancel is not always enough: on Python 3.11, `asyncio.wait_for` (redis-py wraps every socket
    write in it) returns the write's result instead of raising when the cancel lands just as the write
    completes (CPython gh-86296). The loop then runs on, and awaiting it hangs the caller (a gateway
    shutdown, a test's teardown) forever. So the task is cancelled again until it ends.
    """
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_LIMIT_S
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=STOP_RETRY_S)
    if not task.done():
        log.error("background task %s did not stop within %g s of cancelling; left running",
                  task.get_name(), STOP_LIMIT_S)
        return
    with contextlib.suppress(asyncio.CancelledError):
        await task  # done: returns at once, raising what the loop raised (a bug) as before


class MemoryStore:
    """The single-replica store: same operations and results as `RedisStore`, kept in this process."""

    kind = "memory"

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (key, counter) -> (window, count)
        self._usage: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._slots: dict[str, int] = defaultdict(int)
        self._inflight: dict[str, int] = {}

    def _count(self, key: str, counter: str) -> int:
        win, _ = window_now()
        found = self._windows.get((key, counter))
        return found[1] if found and found[0] == win else 0

    def _add(self, key: str, counter: str, n: int) -> None:
        self._windows[(key, counter)] = (window_now()[0], self._count(key, counter) + n)

    async def admit(self, key: str, rpm: int, tpm: int, want: int = 1) -> tuple[int, int]:
        """(verdict, permits): up to `want` requests of this minute, as a lease (see ADMIT_LUA)."""
        if tpm > 0 and self._count(key, "tok") >= tpm:
            return 2, 0
        if rpm <= 0:
            return 0, want
        used = self._count(key, "req")
        if used >= rpm:
            return 1, 0
        take = min(want, rpm - used)
        self._add(key, "req", take)
        return 0, take

    async def add_usage(self, key: str, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            self._usage[key][name] += n
        tokens = counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
        if tokens:
            self._add(key, "tok", tokens)

    async def usage(self, key: str) -> dict[str, int]:
        return dict(self._usage.get(key, {}))

    async def usage_all(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self._usage.items()}

    def take_usage(self) -> dict[str, dict[str, int]]:
        """Hand over every usage total and start from zero (Redis takes them over on recovery)."""
        taken, self._usage = self._usage, defaultdict(lambda: defaultdict(int))
        return {k: dict(v) for k, v in taken.items()}

    def put_back_usage(self, usage: dict[str, dict[str, int]]) -> None:
        """Totals that could not be handed over after all, added to what was counted meanwhile."""
        for key, counts in usage.items():
            for name, n in counts.items():
                self._usage[key][name] += n

    async def acquire(self, name: str, limit: int) -> bool:
        if self._slots[name] >= limit:
            return False
        self._slots[name] += 1
        return True

    async def release(self, name: str) -> None:
        self._slots[name] = max(0, self._slots[name] - 1)

    async def slots(self, name: str) -> int:
        return self._slots.get(name, 0)

    async def sync_inflight(self, local: dict[str, int]) -> dict[str, int]:
        self._inflight.update(local)
        return dict(local)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisStore:
    """The shared store. Every operation is one round trip (a Lua script or a pipeline)."""

    kind = "redis"

    def __init__(self, url: str, replica: str | None = None, timeout_s: float = 0.5) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Short timeouts and no retries: a dead Redis must cost a request milliseconds, not seconds;
        # the fallback, not the client, is what keeps the gateway serving.
        self.redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 0), decode_responses=True)
        self.replica = replica or uuid.uuid4().hex[:12]
        self.beat_prefix = PREFIX + "replica:"
        self._admit = self.redis.register_script(ADMIT_LUA)
        self._acquire = self.redis.register_script(ACQUIRE_LUA)
        self._release = self.redis.register_script(RELEASE_LUA)
        self._inflight = self.redis.register_script(INFLIGHT_LUA)

    async def heartbeat(self) -> None:
        await self.redis.set(self.beat_prefix + self.replica, "1", ex=HEARTBEAT_TTL_S)

    async def admit(self, key: str, rpm: int, tpm: int, want: int = 1) -> tuple[int, int]:
        win, _ = window_now()
        keys = [f"{PREFIX}rl:{key}:req:{win}", f"{PREFIX}rl:{key}:tok:{win}"]
        verdict, permits = await self._admit(keys=keys, args=[rpm, tpm, WINDOW_S * 2, want])
        return int(verdict), int(permits)

    async def add_usage(self, key: str, counts: dict[str, int], charge: bool = True) -> None:
        """Add to the key's totals and (charge) to this minute's token window."""
        win, _ = window_now()
        pipe = self.redis.pipeline(transaction=False)
        for name, n in counts.items():
            pipe.hincrby(f"{PREFIX}usage:{key}", name, n)
        pipe.sadd(f"{PREFIX}usage-keys", key)
        tokens = counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
        if tokens and charge:
            tok = f"{PREFIX}rl:{key}:tok:{win}"
            pipe.incrby(tok, tokens)
            pipe.expire(tok, WINDOW_S * 2)
        await pipe.execute()

    async def usage(self, key: str) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{PREFIX}usage:{key}")
        return {k: int(v) for k, v in raw.items()}

    async def usage_all(self) -> dict[str, dict[str, int]]:
        keys = sorted(await self.redis.smembers(f"{PREFIX}usage-keys"))
        return {k: await self.usage(k) for k in keys}

    async def acquire(self, name: str, limit: int) -> bool:
        args = [self.replica, limit, self.beat_prefix]
        return bool(await self._acquire(keys=[f"{PREFIX}slots:{name}"], args=args))

    async def release(self, name: str) -> None:
        await self._release(keys=[f"{PREFIX}slots:{name}"], args=[self.replica])

    async def slots(self, name: str) -> int:
        raw = await self.redis.hgetall(f"{PREFIX}slots:{name}")
        return sum(int(v) for v in raw.values())

    async def set_slots(self, held: dict[str, int]) -> None:
        """Set this replica's count of each slot name to what it holds. Absolute, not a decrement: it is
        right whether or not a lost release (or acquire) ran before its reply was lost, and can be repeated."""
        pipe = self.redis.pipeline(transaction=False)
        for name, n in held.items():
            if n > 0:
                pipe.hset(f"{PREFIX}slots:{name}", self.replica, n)
            else:
                pipe.hdel(f"{PREFIX}slots:{name}", self.replica)
        await pipe.execute()

    async def sync_inflight(self, local: dict[str, int]) -> dict[str, int]:
        urls = list(local)
        if not urls:
            return {}
        args: list[Any] = [self.replica, self.beat_prefix]
        for url in urls:
            args += [url, local[url]]
        totals = await self._inflight(keys=[f"{PREFIX}inflight:{u}" for u in urls], args=args)
        return {u: int(t) for u, t in zip(urls, totals, strict=True)}

    async def ping(self) -> None:
        await self.redis.ping()
        await self.heartbeat()

    async def close(self) -> None:
        await self.redis.aclose()


class ResilientStore:
    """Redis when it answers, the in-process store while it does not; never an error to the caller."""

    PROBE_EVERY_S = 1.0

    def __init__(self, redis: RedisStore | None) -> None:
        self.redis = redis
        self.memory = MemoryStore()
        self.healthy = redis is not None
        # Slots Redis granted this replica that are still held, and names whose count in Redis may be
        # wrong (a release or acquire that failed): set right on recovery, before Redis is used again.
        self._held: dict[str, int] = defaultdict(int)
        self._unsettled: set[str] = set()
        self._probe: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None

    @property
    def kind(self) -> str:
        return "redis" if self.healthy else "memory"

    async def start(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.heartbeat()
            self._beat = asyncio.create_task(self._heartbeats())

    async def close(self) -> None:
        for task in (self._probe, self._beat):
            await stop_task(task)
        if self.redis is not None:
            await self.redis.close()

    async def _call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        if self.healthy and self.redis is not None:
            try:
                return await op(self.redis)
            except Exception as e:  # any Redis failure (connection, timeout, OOM, script error): degrade
                self._went_away(e)
        return await op(self.memory)

    def _went_away(self, e: Exception) -> None:
        if not self.healthy:
            return
        self.healthy = False
        log.warning("redis unavailable (%s: %s); using the in-process store until it returns",
                    type(e).__name__, e)
        self._probe = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(self.PROBE_EVERY_S)
            try:
                await self.redis.ping()
                await self._move_usage()
                await self._settle_slots()
            except Exception:
                continue
            self.healthy = True
            log.warning("redis is back; shared state is used again")
            return

    async def _move_usage(self) -> None:
        """Usage counted while Redis was away is not lost: the totals move over on recovery (not the
        per-minute token windows: those are stale by then). Taken out of memory before the first await, so
        usage counted meanwhile stays for the next attempt, and a key is dropped only once Redis has it."""
        assert self.redis is not None
        pending = self.memory.take_usage()
        try:
            for key in list(pending):
                if pending[key]:
                    await self.redis.add_usage(key, pending[key], charge=False)
                del pending[key]
        finally:
            self.memory.put_back_usage(pending)

    async def _settle_slots(self) -> None:
        """Set this replica's slot counts in Redis to the Redis-granted slots it still holds: releases
        that could not reach Redis are given back, and slots a restarted Redis (or other replicas, when
        this replica's heartbeat lapsed) dropped are counted again. Runs while `healthy` is still False,
        so only releases change the counts meanwhile; a name released during the write is written again."""
        assert self.redis is not None
        names = self._unsettled | set(self._held)
        while names:
            self._unsettled = set()
            try:
                await self.redis.set_slots({n: self._held.get(n, 0) for n in names})
            except Exception:
                self._unsettled |= names
                raise
            names = self._unsettled

    async def _heartbeats(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            if self.healthy:
                with contextlib.suppress(Exception):
                    await self.redis.heartbeat()

    # ---- operations (same as the stores') ----
    async def admit(self, key: str, rpm: int, tpm: int, want: int = 1) -> tuple[int, int]:
        return await self._call(lambda s: s.admit(key, rpm, tpm, want))

    async def add_usage(self, key: str, counts: dict[str, int]) -> None:
        await self._call(lambda s: s.add_usage(key, counts))

    async def usage(self, key: str) -> dict[str, int]:
        return await self._call(lambda s: s.usage(key))

    async def usage_all(self) -> dict[str, dict[str, int]]:
        return await self._call(lambda s: s.usage_all())

    async def acquire(self, name: str, limit: int) -> str | None:
        """Take a slot: the kind of store that granted it ("redis" or "memory"), to give to `release`;
        None when all are taken."""
        if self.healthy and self.redis is not None:
            try:
                taken = await self.redis.acquire(name, limit)
            except Exception as e:
                self._unsettled.add(name)  # the script may have run before its reply was lost
                self._went_away(e)
            else:
                if taken:
                    self._held[name] += 1  # counted once granted: a settle meanwhile under-counts, never leaks
                return "redis" if taken else None
        return "memory" if await self.memory.acquire(name, limit) else None

    async def release(self, name: str, granted_by: str) -> None:
        """Give a slot back to the store that granted it (the other one never counted it)."""
        if granted_by == "memory":
            await self.memory.release(name)
            return
        self._held[name] -= 1  # before the write: a settle meanwhile under-counts, never leaks
        if self._held[name] <= 0:
            del self._held[name]
        if self.healthy and self.redis is not None:
            try:
                await self.redis.release(name)
                return
            except Exception as e:
                self._went_away(e)
        self._unsettled.add(name)  # Redis still counts it: settled when Redis is back

    async def slots(self, name: str) -> int:
        return await self._call(lambda s: s.slots(name))

    async def sync_inflight(self, local: dict[str, int]) -> dict[str, int]:
        return await self._call(lambda s: s.sync_inflight(local))


def from_env(replica: str | None = None) -> ResilientStore:
    url = os.environ.get("REDIS_URL", "").strip()
    timeout = float(os.environ.get("REDIS_TIMEOUT_S", "0.5"))
    return ResilientStore(RedisStore(url, replica, timeout) if url else None)


class Periodic:
    """Run a coroutine every `interval()` seconds in the background until stopped. A failing round is
    skipped (the store already logs its own outages); the next round tries again. The interval is read
    each round, so an owner's setting (e.g. a test's shorter one) takes effect at once."""

    def __init__(self, interval: Callable[[], float]) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self, round_: Callable[[], Awaitable[object]]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval())
                with contextlib.suppress(Exception):
                    await round_()

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None


class InflightBoard:
    """Requests in flight per backend, for least-loaded routing across gateway replicas.

    The registry's `inflight` dict (what `Registry.resolve` compares) becomes this replica's view of
    the cluster-wide totals: local changes apply at once, and a background sync every `SYNC_S`
    publishes this replica's counts and reads everyone's. Only backends of configs with more than one
    replica are synced: with a single replica there is nothing to choose, so Redis stays off that path.
    """

    SYNC_S = 0.2

    def __init__(self, store: ResilientStore, totals: dict[str, int]) -> None:
        self.store = store
        self.totals = totals  # the registry's dict, mutated in place
        self.local: dict[str, int] = defaultdict(int)
        self._syncer = Periodic(lambda: self.SYNC_S)

    def begin(self, url: str) -> None:
        self.local[url] += 1
        self.totals[url] = self.totals.get(url, 0) + 1

    def end(self, url: str) -> None:
        self.local[url] = max(0, self.local[url] - 1)
        self.totals[url] = max(0, self.totals.get(url, 0) - 1)

    async def sync(self, shared_urls: Iterable[str]) -> None:
        urls = list(shared_urls)
        if not urls:
            return
        totals = await self.store.sync_inflight({u: self.local.get(u, 0) for u in urls})
        for url, total in totals.items():
            self.totals[url] = max(total, self.local.get(url, 0))

    def start(self, shared_urls: Callable[[], Iterable[str]]) -> None:
        self._syncer.start(lambda: self.sync(shared_urls()))

    async def stop(self) -> None:
        await self._syncer.stop()
