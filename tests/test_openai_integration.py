"""Issue 2, for real: the official openai SDK -> gateway -> vLLM-CPU (tiny-llm, all-minilm)."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import openai
import pytest

pytestmark = pytest.mark.integration


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_list_models(tiny_llm, report):
    ids = {m.id for m in client(tiny_llm).models.list().data}
    assert {"tiny-llm", "tiny"} <= ids
    report.real("vLLM-CPU (vllm-cpu 0.32) serving tiny-llm behind the gateway, openai SDK")


def test_chat_completion(tiny_llm):
    r = client(tiny_llm).chat.completions.create(
        model="tiny-llm", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
        extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 8 and r.model == "tiny-llm"


def test_streaming_chat_completion(tiny_llm):
    stream = client(tiny_llm).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 12 and text


def test_completion_is_deterministic(tiny_llm):
    c = client(tiny_llm)
    args = dict(model="tiny-llm", prompt="Hello world", max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    a, b = c.completions.create(**args), c.completions.create(**args)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 10


def test_embeddings_are_semantic(all_minilm, report):
    texts = ["a photo of a cat", "a picture of a kitten", "quarterly stock market report"]
    r = client(all_minilm).embeddings.create(model="all-minilm", input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cat_kitten, cat_stocks = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert cat_kitten > 0.6 and cat_stocks < 0.3 and cat_kitten - cat_stocks > 0.4
    report.real("all-MiniLM-L6-v2 embeddings on vLLM-CPU (--runner pooling)")


def test_unknown_model_is_404_with_available_models(tiny_llm):
    with pytest.raises(openai.NotFoundError) as e:
        client(tiny_llm).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert "tiny-llm" in e.value.body["message"]


def test_configured_but_stopped_backend_is_503(tiny_llm):
    with pytest.raises(openai.APIStatusError) as e:
        client(tiny_llm).chat.completions.create(model="Llama3-8B", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503 and "./start-service.sh llama3-8b" in e.value.body["message"]


def vllm_metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_client_disconnect_cancels_the_upstream_request(tiny_llm, platform):
    """vLLM 0.32 does not count aborts in request_success_total, so look at what it generated: a request
    that kept running after the client left would run to max_tokens (2000 tokens, several seconds)."""
    backend = platform.service("tiny-llm")["url"]
    tokens_before = vllm_metric(backend, "vllm:generation_tokens_total")
    stream = client(tiny_llm).chat.completions.create(
        model="tiny-llm", messages=[{"role": "user", "content": "go"}], max_tokens=2000, stream=True,
        extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # the client walks away mid-stream
    deadline = time.monotonic() + 60
    while vllm_metric(backend, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.2)
    generated = vllm_metric(backend, "vllm:generation_tokens_total") - tokens_before
    assert vllm_metric(backend, "vllm:num_requests_running") == 0
    assert 3 <= generated < 2000, f"{generated} tokens: the upstream request was not cancelled"


def test_a_stopped_config_gives_503_and_comes_back(platform, all_minilm):
    """Stop a running config: the gateway says how to start it; start it again: it answers (no gateway restart)."""
    gw = platform.url
    platform.stop("all-minilm")
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).embeddings.create(model="all-minilm", input="x")
    assert e.value.status_code == 503 and "./start-service.sh all-minilm" in e.value.body["message"]
    platform.ensure("all-minilm")
    assert len(client(gw).embeddings.create(model="all-minilm", input="x").data[0].embedding) == 384


def test_readyz_reports_backends(tiny_llm):
    body = json.loads(urllib.request.urlopen(f"{tiny_llm}/readyz", timeout=10).read())
    assert body["status"] == "ready" and any(k.startswith("tiny-llm@") for k in body["backends"])
