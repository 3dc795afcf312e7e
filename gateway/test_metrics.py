"""Gateway metrics: what each request adds, with the real app in front of a fake vLLM-shaped backend."""

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.testing import FakeBackend

CHAT = "/v1/chat/completions"


@pytest.fixture
async def client():
    fake = FakeBackend(chunks=4)
    url = await fake.start()
    registry = Registry()
    registry.set_running({"tiny-llm": [Backend("tiny-llm", url, url)],
                          "llama3-8b": [Backend("llama3-8b", "http://127.0.0.1:9", "http://127.0.0.1:9")]})
    app = create_app(registry)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            yield c
    await fake.stop()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chat_labels(**extra: str) -> dict[str, str]:
    return {"protocol": "openai", "route": CHAT, "model": "tiny-llm", "config": "tiny-llm", **extra}


def chat(model: str = "tiny", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": kw.pop("content", "hi")}], **kw}


async def test_request_counted_with_template_model_config_and_status(client):
    before = value("modelplat_gateway_requests_total", **chat_labels(status="200"))
    hist_before = value("modelplat_gateway_request_duration_seconds_count", **chat_labels())
    r = await client.post(CHAT, json=chat())
    assert r.status_code == 200
    assert value("modelplat_gateway_requests_total", **chat_labels(status="200")) == before + 1
    assert value("modelplat_gateway_request_duration_seconds_count", **chat_labels()) == hist_before + 1
    assert value("modelplat_gateway_time_to_first_byte_seconds_count", **chat_labels()) >= 1


async def test_route_label_is_the_template_not_the_path(client):
    labels = {"protocol": "openai", "route": "/v1/models/{model:path}", "model": "unknown", "config": "unknown"}
    before = value("modelplat_gateway_requests_total", **labels, status="200")
    await client.get("/v1/models/tiny")
    assert value("modelplat_gateway_requests_total", **labels, status="200") == before + 1


async def test_unknown_model_and_unmatched_path_stay_bounded(client):
    unknown = {"protocol": "openai", "route": CHAT, "model": "unknown", "config": "unknown", "status": "404"}
    before = value("modelplat_gateway_requests_total", **unknown)
    await client.post(CHAT, json=chat(model="some-user-typed-name-123"))
    assert value("modelplat_gateway_requests_total", **unknown) == before + 1
    unmatched = {"protocol": "ollama", "route": "unmatched", "model": "unknown", "config": "unknown", "status": "404"}
    before = value("modelplat_gateway_requests_total", **unmatched)
    await client.get("/api/no/such/path/xyz")
    assert value("modelplat_gateway_requests_total", **unmatched) == before + 1
    exposed = (await client.get("/metrics")).text
    assert "some-user-typed-name" not in exposed and "/api/no/such" not in exposed


async def test_stream_counts_chunks_and_usage_tokens(client):
    base = {"protocol": "openai", "model": "tiny-llm", "config": "tiny-llm"}
    chunks = value("modelplat_gateway_stream_chunks_total", **base)
    completion = value("modelplat_gateway_tokens_total", **base, kind="completion")
    r = await client.post(CHAT, json=chat(stream=True))
    assert r.text.endswith("data: [DONE]\n\n")
    assert value("modelplat_gateway_stream_chunks_total", **base) > chunks
    assert value("modelplat_gateway_tokens_total", **base, kind="completion") == completion + 4


async def test_non_stream_usage_tokens(client):
    base = {"protocol": "openai", "model": "tiny-llm", "config": "tiny-llm"}
    prompt = value("modelplat_gateway_tokens_total", **base, kind="prompt")
    await client.post("/v1/completions", json={"model": "tiny-llm", "prompt": "x"})
    assert value("modelplat_gateway_tokens_total", **base, kind="prompt") == prompt + 5


async def test_upstream_errors_by_kind(client):
    labels = {"protocol": "openai", "config": "llama3-8b", "kind": "connect"}
    before = value("modelplat_gateway_upstream_errors_total", **labels)
    r = await client.post(CHAT, json=chat(model="Llama3-8B"))
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect"
    assert value("modelplat_gateway_upstream_errors_total", **labels) == before + 1
    broken = {"protocol": "openai", "config": "tiny-llm", "kind": "broken"}
    before = value("modelplat_gateway_upstream_errors_total", **broken)
    r = await client.post(CHAT, json=chat(content="die", stream=True))
    assert '"upstream_broken"' in r.text
    assert value("modelplat_gateway_upstream_errors_total", **broken) == before + 1


async def test_rate_limit_rejections_counted_when_raised_or_reported(client):
    from gateway.errors import RateLimited

    app = create_app(Registry())

    @app.get("/v1/limited")
    async def limited():
        raise RateLimited("slow down")

    before = value("modelplat_gateway_rate_limited_total", protocol="openai", limit="requests")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/v1/limited")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    metrics.count_rate_limited("ollama", "tokens")
    assert value("modelplat_gateway_rate_limited_total", protocol="openai", limit="requests") == before + 1
    assert value("modelplat_gateway_rate_limited_total", protocol="ollama", limit="tokens") >= 1


async def test_in_flight_returns_to_zero_and_backends_listed(client):
    await client.post(CHAT, json=chat(stream=True))
    assert value("modelplat_gateway_requests_in_flight", protocol="openai") == 0
    text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    backends = {s.labels["config"]: s.value for s in families["modelplat_gateway_backends"].samples}
    assert backends == {"tiny-llm": 1, "llama3-8b": 1}
    assert "modelplat_gateway_requests" in families  # the counter family (exposed as _total)


@pytest.mark.parametrize(("path", "protocol"), [
    ("/v1/chat/completions", "openai"), ("/v1/images/generations", "openai"), ("/api/chat", "ollama"),
    ("/ocr", "mtphotos"), ("/clip/img", "mtphotos"), ("/represent", "mtphotos"), ("/healthz", "other"),
])
def test_protocol_of(path, protocol):
    assert metrics.protocol_of(path) == protocol


@pytest.mark.parametrize(("body", "usage"), [
    (b'{"choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}', (7, 3)),
    (b'{"data":[],"usage":{"prompt_tokens":12,"total_tokens":12}}', (12, 0)),
    (b'data: {"choices":[],"usage":{"prompt_tokens": 2, "completion_tokens": 9}}\n\ndata: [DONE]\n\n', (2, 9)),
    (b'{"choices":[{"text":"usage"}]}', None),
    (b'{"choices":[]}', None),
])
def test_usage_of(body, usage):
    assert metrics.usage_of(body) == usage
