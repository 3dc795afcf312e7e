"""Ollama /api/chat and /api/generate requests -> the backend's OpenAI request (pure translation).

Chat becomes `/v1/chat/completions`; generate becomes a one-turn chat (the backend applies the model's
template, as Ollama does), or `/v1/completions` when `raw` is set or a `suffix` asks for fill-in-the-middle.
The backend is always asked to stream (with usage), even when the client is not: the gateway then
measures time to first token for `prompt_eval_duration` and folds the chunks into one reply.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.adapters.ollama_common import check_think, map_format, map_options, require, think_fields
from gateway.configs import Capability, Config
from gateway.errors import BadRequest

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass
class Plan:
    """What to send upstream and how to answer the client."""

    kind: str  # "chat" or "generate": the shape of the Ollama reply
    path: str
    body: dict[str, Any]
    model: str  # the name echoed in replies
    stream: bool = True  # the client's choice; the upstream request always streams
    show_thinking: bool = True  # False when the client said think=false


def client_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", param="stream")
    return stream


def _base(cfg: Config, body: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": cfg.model.served_name, "stream": True,
                           "stream_options": {"include_usage": True}}
    out.update(map_options(body.get("options"), cfg))
    if (fmt := map_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    out.update(_logprobs(body, path))
    return out


def _logprobs(body: dict[str, Any], path: str) -> dict[str, Any]:
    want, top = body.get("logprobs"), body.get("top_logprobs")
    if want is None and top is None:
        return {}
    if not isinstance(want, bool | None):
        raise BadRequest("logprobs must be a boolean", param="logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise BadRequest("top_logprobs must be an integer from 0 to 20", param="top_logprobs")
    if not want and not top:
        return {}
    if path == COMPLETIONS_PATH:  # the legacy API takes the number of alternatives in `logprobs`
        return {"logprobs": top or 0}
    return {"logprobs": True, "top_logprobs": top or 0}


# ---------------------------------------------------------------- chat


def chat_plan(body: dict[str, Any], cfg: Config, model: str) -> Plan:
    require(cfg, Capability.completion, model, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    think = check_think(body.get("think"), cfg, model)
    out = _base(cfg, body, CHAT_PATH)
    out["messages"] = chat_messages(messages, cfg, model)
    if tools := body.get("tools"):
        require(cfg, Capability.tools, model, "tools")
        out["tools"] = openai_tools(tools)
    out.update(think_fields(body.get("think"), cfg))
    return Plan("chat", CHAT_PATH, out, model, client_stream(body), show_thinking=think is not False)


def chat_messages(messages: list[Any], cfg: Config, model: str) -> list[dict[str, Any]]:
    ids = _ToolCallIds()
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string role", param=f"messages[{i}]")
        out.append(_message(m, i, cfg, model, ids))
    return out


def _message(m: dict[str, Any], i: int, cfg: Config, model: str, ids: _ToolCallIds) -> dict[str, Any]:
    role, content = m["role"], m.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
    msg: dict[str, Any] = {"role": role, "content": content or ""}
    if images := m.get("images"):
        require(cfg, Capability.vision, model, "vision (images)")
        msg["content"] = image_parts(content or "", images, f"messages[{i}].images")
    if role == "assistant" and m.get("tool_calls"):
        msg["tool_calls"] = [ids.issue(tc, i, j) for j, tc in enumerate(_list(m["tool_calls"], i))]
    if role == "tool":
        msg["tool_call_id"] = ids.answer(m.get("tool_call_id"), m.get("tool_name"))
        if m.get("tool_name"):
            msg["name"] = m["tool_name"]
    return msg


def _list(value: Any, i: int) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"messages[{i}].tool_calls must be a list", param=f"messages[{i}].tool_calls")
    return value


class _ToolCallIds:
    """OpenAI links a tool result to its call by id; Ollama by name (or order). Issue ids, then match results."""

    def __init__(self) -> None:
        self.open: list[tuple[str, str]] = []  # (id, function name) of calls not answered yet

    def issue(self, call: Any, i: int, j: int) -> dict[str, Any]:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"messages[{i}].tool_calls[{j}].function.name is required",
                             param=f"messages[{i}].tool_calls")
        args = fn.get("arguments", {})
        if not isinstance(args, str):
            args = orjson.dumps(args).decode()  # OpenAI wants arguments as a JSON string
        call_id = call.get("id") or f"call_{i}_{j}"
        self.open.append((call_id, fn["name"]))
        return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}}

    def answer(self, call_id: Any, name: Any) -> str:
        for k, (cid, cname) in enumerate(self.open):
            if (call_id and cid == call_id) or (not call_id and (not name or cname == name)):
                del self.open[k]
                return cid
        return call_id or f"call_{name or 'tool'}"


def openai_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list", param="tools")
    out = []
    for k, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequest(f"tools[{k}].function.name is required", param=f"tools[{k}]")
        out.append({"type": "function", "function": {k2: v for k2, v in fn.items() if v is not None}})
    return out


# ---------------------------------------------------------------- images

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


def image_mime(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def image_url(image: Any, where: str) -> str:
    """One Ollama image (base64, or a data URI) -> an OpenAI `image_url` data URI with its real media type."""
    if not isinstance(image, str) or not image:
        raise BadRequest(f"{where}: each image must be a non-empty base64 string", param=where)
    b64 = image.split(",", 1)[1] if image.startswith("data:") else image
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: image is not valid base64", param=where) from None
    mime = image_mime(data)
    if mime == "application/octet-stream":
        raise BadRequest(f"{where}: unsupported image format (want PNG, JPEG, GIF, WebP or BMP)", param=where)
    return f"data:{mime};base64,{b64}"


def image_parts(text: str, images: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(images, list):
        raise BadRequest(f"{where} must be a list of base64 strings", param=where)
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_url(img, where)}}
                                   for img in images]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


# ---------------------------------------------------------------- generate

# Fill-in-the-middle prompt layouts per model family (the tokenizer maps these markers to its special tokens).
FIM_TEMPLATES = {
    "mistral": "[SUFFIX]{suffix}[PREFIX]{prompt}",  # Codestral
    "qwen2": "<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>",  # Qwen2.5-Coder
    "starcoder2": "<fim_prefix>{prompt}<fim_suffix>{suffix}<fim_middle>",
    "codellama": "<PRE> {prompt} <SUF>{suffix} <MID>",
}


def generate_plan(body: dict[str, Any], cfg: Config, model: str) -> Plan:
    require(cfg, Capability.completion, model, "generate")
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    think = check_think(body.get("think"), cfg, model)
    suffix = body.get("suffix")
    if suffix:
        return _fim_plan(body, cfg, model, prompt, suffix)
    if body.get("raw"):
        if body.get("images"):
            raise BadRequest("images cannot be used with raw mode", param="images")
        out = _base(cfg, body, COMPLETIONS_PATH)
        out["prompt"] = prompt
        return Plan("generate", COMPLETIONS_PATH, out, model, client_stream(body))
    out = _base(cfg, body, CHAT_PATH)
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    user: dict[str, Any] = {"role": "user", "content": prompt}
    if images := body.get("images"):
        require(cfg, Capability.vision, model, "vision (images)")
        user["content"] = image_parts(prompt, images, "images")
    messages.append(user)
    out["messages"] = messages
    out.update(think_fields(body.get("think"), cfg))
    return Plan("generate", CHAT_PATH, out, model, client_stream(body), show_thinking=think is not False)


def _fim_plan(body: dict[str, Any], cfg: Config, model: str, prompt: str, suffix: Any) -> Plan:
    require(cfg, Capability.insert, model, "insert")
    template = FIM_TEMPLATES.get(cfg.model.family)
    if template is None or not isinstance(suffix, str):
        raise BadRequest(f'"{model}" does not support insert (no fill-in-the-middle layout for family '
                         f"{cfg.model.family!r})")
    out = _base(cfg, body, COMPLETIONS_PATH)
    out["prompt"] = template.format(prompt=prompt, suffix=suffix)
    return Plan("generate", COMPLETIONS_PATH, out, model, client_stream(body))


# ---------------------------------------------------------------- load / unload


def is_load_request(kind: str, body: dict[str, Any]) -> bool:
    """Ollama's convention: generate with an empty prompt (and no images), or chat with no messages."""
    if kind == "chat":
        return body.get("messages") in (None, [])
    return body.get("prompt") in (None, "") and not body.get("images") and not body.get("suffix")
