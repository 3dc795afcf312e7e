import asyncio

import pytest

from services.common.lifecycle import Lifecycle, State


def make(idle: float = 0, fail_first: bool = False):
    calls = {"load": 0, "unload": 0}

    async def load():
        calls["load"] += 1
        await asyncio.sleep(0.05)
        if fail_first and calls["load"] == 1:
            raise RuntimeError("boom")
        return f"model{calls['load']}"

    async def unload():
        calls["unload"] += 1
        await asyncio.sleep(0.01)

    return Lifecycle("t", load, unload, idle_timeout_s=idle), calls


async def test_lazy_load_once_for_concurrent_callers():
    lc, calls = make()
    assert lc.state == State.unloaded
    models = await asyncio.gather(*(lc.acquire() for _ in range(8)))
    assert set(models) == {"model1"} and calls["load"] == 1 and lc.state == State.ready
    for _ in models:
        await lc.release()


async def test_idle_unload_and_reload():
    lc, calls = make(idle=0.1)
    async with lc.use():
        pass
    await asyncio.sleep(0.3)
    assert lc.state == State.unloaded and calls["unload"] == 1
    async with lc.use() as m:
        assert m == "model2"


async def test_unload_waits_for_in_flight_use():
    lc, _ = make()
    m = await lc.acquire()
    task = asyncio.create_task(lc.unload())
    await asyncio.sleep(0.05)
    assert lc.state == State.ready and not task.done()
    await lc.release()
    assert await task is True and lc.state == State.unloaded and m == "model1"


async def test_failed_load_wakes_waiters_and_retries():
    lc, _ = make(fail_first=True)
    results = await asyncio.gather(lc.acquire(), lc.acquire(), return_exceptions=True)
    assert any(isinstance(r, RuntimeError) for r in results)
    assert lc.stats.load_failures == 1
    assert await lc.acquire() in ("model2", "model3")


async def test_snapshot_and_idle_timeout_change():
    lc, _ = make()
    await lc.load()
    lc.set_idle_timeout(0.05)
    assert lc.snapshot()["state"] == "ready"
    await asyncio.sleep(0.2)
    assert lc.snapshot()["state"] == "unloaded"


@pytest.mark.parametrize("n", [1, 3])
async def test_unload_when_not_loaded(n):
    lc, _ = make()
    for _ in range(n):
        assert await lc.unload() is False
