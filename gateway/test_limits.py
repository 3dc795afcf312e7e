"""Limits that need no server: prompt estimate, body limits per route, usage batching."""

import orjson
import pytest

from gateway.configs import load_catalog
from gateway.errors import BadRequest
from gateway.limits import Admission, Settings, Usage, check_prompt, text_chars
from gateway.store import MemoryStore, ResilientStore

TINY = load_catalog().require("tiny-llm")  # context_length 2048


def chat(text: str, **kw) -> bytes:
    return orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": text}], **kw})


def test_short_prompt_is_not_parsed_and_passes():
    assert check_prompt(None, TINY, "/v1/chat/completions", chat("hello")) < 100
    assert check_prompt(None, TINY, "/v1/embeddings", b"x" * 100_000) == 0  # not a prompt route


def test_long_prompt_is_refused_with_openai_code():
    with pytest.raises(BadRequest) as e:
        check_prompt(None, TINY, "/v1/chat/completions", chat("word " * 4000))
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages" and "2048" in e.value.message


def test_image_parts_do_not_count_as_prompt_text():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 50_000}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]}
    assert text_chars(body) == 5
    assert check_prompt(None, TINY, "/v1/chat/completions", orjson.dumps(body)) == 1


def test_completions_prompt_list():
    assert text_chars({"prompt": ["ab", "cd"]}) == 4
    with pytest.raises(BadRequest) as e:
        check_prompt(None, TINY, "/v1/completions", orjson.dumps({"model": "t", "prompt": "x" * 10_000}))
    assert e.value.param == "prompt"


def test_image_routes_have_their_own_body_limit():
    s = Settings(max_body=10, max_image_body=1000)
    assert s.body_limit("/v1/chat/completions") == 10
    assert s.body_limit("/v1/images/generations") == s.body_limit("/ocr") == s.body_limit("/clip/img") == 1000


async def test_usage_is_batched_per_key():
    store = ResilientStore(None)
    usage = Usage(store)
    usage.add("k", requests=1, prompt_tokens=3)
    usage.add("k", requests=1, completion_tokens=0)
    assert await store.usage("k") == {}
    await usage.flush()
    assert await store.usage("k") == {"requests": 2, "prompt_tokens": 3}
    assert isinstance(store.memory, MemoryStore)


async def test_admission_leases_permits_and_keeps_the_limit(monkeypatch):
    for module in ("gateway.store", "gateway.limits"):  # one fixed minute: no window change mid-test
        monkeypatch.setattr(f"{module}.window_now", lambda now=None: (1, 30.0))
    store = MemoryStore()
    calls = 0
    admit = store.admit

    async def counted(*a, **kw):
        nonlocal calls
        calls += 1
        return await admit(*a, **kw)

    store.admit = counted  # type: ignore[method-assign]
    admission = Admission(store)  # type: ignore[arg-type]
    assert admission.lease_size(1000, 0) == 20 and admission.lease_size(60, 0) == 1
    assert admission.lease_size(0, 200) == 1 and admission.lease_size(0, 0) == Admission.LEASE_MAX
    verdicts = [await admission.admit("k", 1000, 0) for _ in range(1001)]
    assert verdicts.count(0) == 1000 and verdicts[-1] == 1  # exactly the limit, never more
    assert calls <= 1000 // 20 + 2


async def test_concurrent_requests_share_one_lease_request(monkeypatch):
    import asyncio

    monkeypatch.setattr("gateway.limits.window_now", lambda now=None: (1, 30.0))
    monkeypatch.setattr("gateway.store.window_now", lambda now=None: (1, 30.0))
    store = MemoryStore()
    calls = 0
    admit = store.admit

    async def slow(*a, **kw):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return await admit(*a, **kw)

    store.admit = slow  # type: ignore[method-assign]
    admission = Admission(store)  # type: ignore[arg-type]
    verdicts = await asyncio.gather(*(admission.admit("k", 1600, 0) for _ in range(32)))  # lease of 32
    assert verdicts == [0] * 32 and calls == 1


def test_text_chars_ignores_malformed_parts():
    from gateway.limits import text_chars

    body = {"messages": [{"role": "user", "content": [{"text": 3.5}, {"text": "abcd"}, [], "x", {"type": "image_url"}]},
                         {"role": "user", "content": "hi"}, "junk"], "prompt": ["ab", 7, [1, 2]]}
    assert text_chars(body) == 4 + 2 + 2 + 1 + 2
