"""Ollama requests -> OpenAI requests: options, format, think, images, tools, generate modes, keep_alive."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import orjson
import pytest

from gateway.adapters import ollama as ad
from gateway.adapters.ollama_request import CHAT_PATH, COMPLETIONS_PATH, image_mime
from gateway.configs import load_catalog
from gateway.errors import BadRequest

CATALOG = load_catalog()
TINY = CATALOG.require("tiny-llm")
VLM = CATALOG.require("qwen2.5-vl-3b")
THINKER = CATALOG.require("qwen3-4b-thinking")
CODER = CATALOG.require("codestral-22b-v0.1")
MINILM = CATALOG.require("all-minilm")
PNG = (Path(__file__).parent / "testdata" / "red-4x4.png").read_bytes()
PNG_B64 = base64.b64encode(PNG).decode()


def chat(body: dict, cfg=TINY) -> ad.Plan:
    return ad.chat_plan({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, cfg, "m")


# ---------------------------------------------------------------- options


def test_options_map_to_vllm_sampling() -> None:
    opts = {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 7, "num_predict": 32,
            "stop": ["\n\n", "END"], "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25,
            "num_gpu": 99, "num_thread": 8, "mirostat": 0}
    body = chat({"options": opts}).body
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "stop",
                                 "repetition_penalty", "presence_penalty", "frequency_penalty")} == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 7, "max_tokens": 32,
        "stop": ["\n\n", "END"], "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25}
    assert not {"num_gpu", "num_thread", "mirostat", "num_predict"} & body.keys()  # engine-only: ignored


def test_upstream_always_streams_with_usage() -> None:
    plan = chat({"stream": False})
    assert plan.stream is False
    assert plan.body["stream"] is True and plan.body["stream_options"] == {"include_usage": True}
    assert plan.body["model"] == "tiny-llm" and plan.path == CHAT_PATH


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_num_predict_without_limit_leaves_max_tokens_to_the_backend(num_predict: int) -> None:
    assert "max_tokens" not in chat({"options": {"num_predict": num_predict}}).body


def test_num_ctx_caps_num_predict_and_is_capped_by_the_model() -> None:
    assert chat({"options": {"num_predict": 5000}}).body["max_tokens"] == 2048  # tiny-llm: 2048 tokens
    assert chat({"options": {"num_predict": 500, "num_ctx": 256}}).body["max_tokens"] == 256
    assert chat({"options": {"num_predict": 5000, "num_ctx": 100_000}}).body["max_tokens"] == 2048
    with pytest.raises(BadRequest, match="num_ctx"):
        chat({"options": {"num_ctx": 0}})


@pytest.mark.parametrize("opts", [{"temperature": "hot"}, {"top_k": 1.5}, {"seed": True}, {"stop": 3},
                                  {"num_ctx": "big"}])
def test_bad_option_types_are_400(opts: dict) -> None:
    with pytest.raises(BadRequest, match="option"):
        chat({"options": opts})


def test_single_stop_string_and_vllm_extras() -> None:
    body = chat({"options": {"stop": "###", "ignore_eos": True, "min_tokens": 4}}).body
    assert body["stop"] == ["###"] and body["ignore_eos"] is True and body["min_tokens"] == 4


# ---------------------------------------------------------------- format


def test_format_json_and_schema() -> None:
    assert chat({"format": "json"}).body["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = chat({"format": schema}).body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema
    assert "response_format" not in chat({"format": ""}).body
    with pytest.raises(BadRequest, match="format"):
        chat({"format": "yaml"})


# ---------------------------------------------------------------- think


def test_think_on_a_reasoning_model() -> None:
    plan = chat({"think": True}, THINKER)
    assert plan.show_thinking and plan.body["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat({"think": "high"}, THINKER).body["reasoning_effort"] == "high"
    assert chat({"think": "max"}, THINKER).body["reasoning_effort"] == "high"
    off = chat({"think": False}, THINKER)
    assert off.show_thinking is False and off.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in chat({}, THINKER).body  # unset: the model's default


def test_think_on_a_model_that_cannot_is_400_but_false_is_fine() -> None:
    with pytest.raises(BadRequest, match='"m" does not support thinking'):
        chat({"think": True})
    assert "chat_template_kwargs" not in chat({"think": False}).body
    with pytest.raises(BadRequest, match="invalid think"):
        chat({"think": "extreme"}, THINKER)


# ---------------------------------------------------------------- messages, images, tools


def test_message_images_become_data_uri_parts_for_vision_models() -> None:
    plan = ad.chat_plan({"model": "v", "messages": [{"role": "user", "content": "what colour?", "images": [PNG_B64]}]},
                        VLM, "v")
    parts = plan.body["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}
    assert parts[1] == {"type": "text", "text": "what colour?"}


def test_images_to_a_text_model_or_garbage_images_are_400() -> None:
    with pytest.raises(BadRequest, match="does not support vision"):
        chat({"messages": [{"role": "user", "content": "x", "images": [PNG_B64]}]})
    with pytest.raises(BadRequest, match="base64"):
        chat({"messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]}, VLM)
    with pytest.raises(BadRequest, match="unsupported image format"):
        chat({"messages": [{"role": "user", "content": "x", "images": [base64.b64encode(b"hello").decode()]}]}, VLM)


def test_image_media_types_are_sniffed() -> None:
    assert image_mime(PNG) == "image/png"
    assert image_mime(b"\xff\xd8\xff\xe0....") == "image/jpeg"
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_mime(b"GIF89a") == "image/gif"


CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": CITY}}]


def test_tool_history_gets_ids_and_string_arguments() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "22 C", "tool_name": "get_weather"},
        {"role": "tool", "content": "25 C", "tool_name": "get_weather"},
    ]
    body = chat({"messages": messages, "tools": TOOLS}).body
    calls = body["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "call_1_1"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [m["tool_call_id"] for m in body["messages"][2:]] == ["call_1_0", "call_1_1"]
    assert body["tools"][0]["function"]["name"] == "get_weather"


def test_tools_to_a_model_without_tools_is_400() -> None:
    with pytest.raises(BadRequest, match="does not support tools"):
        chat({"tools": TOOLS}, CATALOG.require("llama3-8b"))


@pytest.mark.parametrize("messages", [[], "hi", [{"content": "no role"}], [{"role": "user", "content": 3}]])
def test_bad_messages_are_400(messages: object) -> None:
    with pytest.raises(BadRequest):
        ad.chat_plan({"model": "m", "messages": messages}, TINY, "m")


def test_embedding_model_cannot_chat() -> None:
    with pytest.raises(BadRequest, match='"all-minilm" does not support chat'):
        ad.chat_plan({"messages": [{"role": "user", "content": "x"}]}, MINILM, "all-minilm")


# ---------------------------------------------------------------- generate


def test_generate_is_a_one_turn_chat_with_system_and_images() -> None:
    plan = ad.generate_plan({"prompt": "describe", "system": "be brief", "images": [PNG_B64]}, VLM, "v")
    assert plan.path == CHAT_PATH and plan.kind == "generate"
    assert plan.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert plan.body["messages"][1]["content"][0]["type"] == "image_url"


def test_generate_raw_uses_completions_without_template() -> None:
    plan = ad.generate_plan({"prompt": "<|im_start|>user\nhi", "raw": True, "options": {"num_predict": 4}}, TINY, "t")
    assert plan.path == COMPLETIONS_PATH and plan.body["prompt"] == "<|im_start|>user\nhi"
    assert plan.body["max_tokens"] == 4 and "messages" not in plan.body


def test_suffix_uses_the_family_fill_in_the_middle_layout() -> None:
    plan = ad.generate_plan({"prompt": "def add(a, b):\n", "suffix": "\n    return c"}, CODER, "c")
    assert plan.path == COMPLETIONS_PATH
    assert plan.body["prompt"] == "[SUFFIX]\n    return c[PREFIX]def add(a, b):\n"
    with pytest.raises(BadRequest, match="does not support insert"):
        ad.generate_plan({"prompt": "x", "suffix": "y"}, TINY, "t")


def test_load_requests() -> None:
    assert ad.is_load_request("generate", {"model": "m"})
    assert ad.is_load_request("generate", {"model": "m", "prompt": ""})
    assert not ad.is_load_request("generate", {"model": "m", "prompt": "", "images": [PNG_B64]})
    assert ad.is_load_request("chat", {"model": "m", "messages": []})
    assert not ad.is_load_request("chat", {"model": "m", "messages": [{"role": "user", "content": ""}]})


# ---------------------------------------------------------------- keep_alive


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("1.5h", 5400.0), ("250ms", 0.25), ("10", 10.0), (-1, math.inf), ("-1m", math.inf),
])
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert ad.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1]])
def test_bad_keep_alive(value: object) -> None:
    with pytest.raises(BadRequest):
        ad.keep_alive_seconds(value)


def test_created_at_is_rfc3339_with_nanoseconds() -> None:
    assert ad.rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_logprobs_request() -> None:
    body = chat({"logprobs": True, "top_logprobs": 3}).body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert "logprobs" not in chat({"logprobs": False}).body
    raw = ad.generate_plan({"prompt": "x", "raw": True, "logprobs": True, "top_logprobs": 2}, TINY, "t")
    assert raw.body["logprobs"] == 2
    with pytest.raises(BadRequest, match="top_logprobs"):
        chat({"logprobs": True, "top_logprobs": 50})
