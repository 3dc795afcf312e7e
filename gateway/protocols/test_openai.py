import json

import httpx
import pytest

from gateway.app import create_app
from gateway.registry import Backend, Registry
from gateway.testing import FakeBackend


@pytest.fixture
async def client():
    fake = FakeBackend(chunks=4)
    url = await fake.start()
    registry = Registry()
    registry.set_running({"tiny-llm": [Backend("tiny-llm", url, url)]})
    app = create_app(registry)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            c.fake = fake
            yield c
    await fake.stop()


def chat(model="tiny", content="hi", **kw):
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


async def test_models_lists_running_configs_and_aliases(client):
    r = await client.get("/v1/models")
    ids = {m["id"] for m in r.json()["data"]}
    assert {"tiny-llm", "tiny"} <= ids and "Llama3-8B" not in ids


async def test_alias_is_rewritten_to_served_name(client):
    r = await client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200 and r.json()["model"] == "tiny-llm"
    assert client.fake.requests[-1]["model"] == "tiny-llm"


async def test_stream_passes_chunks_and_done(client):
    r = await client.post("/v1/chat/completions", json=chat(stream=True))
    events = [e for e in r.text.split("\n\n") if e]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 4 + 2 and events[-1] == "data: [DONE]"


async def test_unknown_model_is_404_listing_available(client):
    r = await client.post("/v1/chat/completions", json=chat(model="gpt-17"))
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and "tiny-llm" in err["message"]


async def test_stopped_backend_is_503_with_start_hint(client):
    r = await client.post("/v1/completions", json={"model": "Llama3-8B", "prompt": "x"})
    assert r.status_code == 503
    assert "./start-service.sh llama3-8b" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [(b"{not json", None), (b"[1,2]", None), (b"", None), (json.dumps({"messages": []}).encode(), "model"),
     (json.dumps({"model": "tiny"}).encode(), "messages"), (json.dumps(chat(stream="yes")).encode(), "stream"),
     (json.dumps({"model": 5, "messages": [1]}).encode(), "model")],
)
async def test_bad_input_is_400_in_openai_shape(client, body, param):
    r = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.json()["error"]["param"] == param


async def test_backend_error_passes_through(client):
    r = await client.post("/v1/chat/completions", json=chat(content="error:400"))
    assert r.status_code == 400 and r.json()["error"]["message"] == "scripted 400"


async def test_backend_500_becomes_502(client):
    r = await client.post("/v1/chat/completions", json=chat(content="error:500"))
    assert r.status_code == 502 and "scripted 500" in r.json()["error"]["message"]


async def test_mid_stream_death_gives_error_event_and_done(client):
    r = await client.post("/v1/chat/completions", json=chat(content="die", stream=True))
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "upstream_broken"


async def test_unreachable_backend_is_502():
    registry = Registry()
    registry.set_running({"tiny-llm": [Backend("tiny-llm", "http://127.0.0.1:9", "http://127.0.0.1:9")]})
    app = create_app(registry)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect"
            r = await c.get("/readyz")
            assert r.status_code == 503


async def test_embeddings_and_health(client):
    r = await client.post("/v1/embeddings", json={"model": "tiny-llm", "input": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
