"""Ollama API <-> OpenAI API translation, pure (no I/O): the one import the Ollama routes need.

The work is split by concern:
  ollama_common   time stamps, keep_alive, options, format, think, capability checks
  ollama_request  /api/chat and /api/generate requests -> OpenAI chat/completions requests (images, tools)
  ollama_stream   OpenAI SSE chunks -> Ollama NDJSON chunks and the final `done` object with metrics
  ollama_embed    /api/embed and /api/embeddings <-> /v1/embeddings
  ollama_meta     /api/tags, /api/show and /api/ps entries from the config catalog
  ollama_types    pydantic models of every endpoint (OpenAPI document only)
"""

from __future__ import annotations

from gateway.adapters.ollama_common import check_think, keep_alive_seconds, map_format, map_options, rfc3339
from gateway.adapters.ollama_embed import EMBED_PATH, embed_inputs, embed_request, embed_response, embeddings_prompt
from gateway.adapters.ollama_meta import ps_entry, show, tag_name, tags_entry
from gateway.adapters.ollama_request import Plan, chat_plan, client_stream, generate_plan, is_load_request
from gateway.adapters.ollama_stream import SSEParser, StreamFailed, Timing, Translator, error_message

__all__ = [
    "EMBED_PATH", "Plan", "SSEParser", "StreamFailed", "Timing", "Translator", "chat_plan", "check_think",
    "client_stream", "embed_inputs", "embed_request", "embed_response", "embeddings_prompt", "error_message",
    "generate_plan", "is_load_request", "keep_alive_seconds", "load_reply", "map_format", "map_options", "ps_entry",
    "rfc3339", "show", "tag_name", "tags_entry",
]


def load_reply(kind: str, model: str, reason: str, load_ns: int = 0, total_ns: int = 0) -> dict:
    """The answer to an empty prompt: the model was loaded (`load`) or unloaded (`unload`)."""
    obj: dict = {"model": model, "created_at": rfc3339()}
    if kind == "chat":
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj.update(done=True, done_reason=reason)
    if reason == "load":
        obj.update(total_duration=total_ns, load_duration=load_ns)
    return obj
