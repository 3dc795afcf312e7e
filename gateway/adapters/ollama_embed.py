"""Ollama /api/embed and /api/embeddings <-> the backend's OpenAI /v1/embeddings (pure translation)."""

from __future__ import annotations

from typing import Any

from gateway.adapters.ollama_common import require
from gateway.configs import Capability, Config
from gateway.errors import BadRequest

EMBED_PATH = "/v1/embeddings"


def embed_inputs(body: dict[str, Any]) -> list[str]:
    """`input` of /api/embed: a string or a list of strings (empty -> nothing to embed)."""
    value = body.get("input")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("input must be a string or a list of strings", param="input")


def embed_request(inputs: list[str], body: dict[str, Any], cfg: Config, model: str) -> dict[str, Any]:
    require(cfg, Capability.embedding, model, "embeddings")
    out: dict[str, Any] = {"model": cfg.model.served_name, "input": inputs, "encoding_format": "float"}
    truncate = body.get("truncate", True)
    if not isinstance(truncate, bool | None):
        raise BadRequest("truncate must be a boolean", param="truncate")
    if truncate is not False:
        out["truncate_prompt_tokens"] = -1  # vLLM: cut each input to the model's length, as Ollama does
    if (dims := body.get("dimensions")) is not None:
        if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0:
            raise BadRequest("dimensions must be a positive integer", param="dimensions")
        out["dimensions"] = dims
    return out


def embed_response(reply: dict[str, Any], model: str, durations: dict[str, int]) -> dict[str, Any]:
    data = sorted(reply.get("data") or [], key=lambda d: d.get("index", 0))
    out: dict[str, Any] = {"model": model, "embeddings": [d["embedding"] for d in data], **durations}
    usage = reply.get("usage") or {}
    if "prompt_tokens" in usage:
        out["prompt_eval_count"] = int(usage["prompt_tokens"])
    return out


def embeddings_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    return prompt
