"""Request and response types of the Ollama API, for the OpenAPI document.

The routes read bodies themselves (tolerantly, as real Ollama does: unknown fields are ignored) and
publish these models as the documented contract. Field names follow Ollama's `api/types.go`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


Think = bool | Literal["low", "medium", "high", "max"]
Format = Literal["", "json"] | dict[str, Any]
KeepAlive = float | int | str


class Options(Open):
    """Modelfile parameters. Those listed are mapped onto vLLM sampling; the rest are accepted and ignored."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    num_predict: int | None = Field(None, description="max tokens to generate; -1 = no limit")
    num_ctx: int | None = Field(None, description="capped at the model's context length")
    stop: list[str] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ToolCallFunction(Open):
    name: str
    arguments: dict[str, Any] = Field(description="a JSON object (OpenAI sends a JSON string)")


class ToolCall(Open):
    function: ToolCallFunction


class Message(Open):
    role: str = Field(description="system, user, assistant or tool")
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = Field(None, description="base64-encoded images (vision models)")
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


class GenerateRequest(Open):
    model: str
    prompt: str | None = Field(None, description="empty: load the model (keep_alive 0: unload it)")
    suffix: str | None = None
    system: str | None = None
    template: str | None = Field(None, description="ignored: the backend applies the model's own template")
    images: list[str] | None = None
    think: Think | None = None
    format: Format | None = None
    options: Options | None = None
    raw: bool | None = None
    stream: bool | None = True
    keep_alive: KeepAlive | None = None
    context: list[int] | None = Field(None, description="deprecated; ignored")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ChatRequest(Open):
    model: str
    messages: list[Message] | None = Field(None, description="empty: load the model (keep_alive 0: unload)")
    tools: list[dict[str, Any]] | None = None
    think: Think | None = None
    format: Format | None = None
    options: Options | None = None
    stream: bool | None = True
    keep_alive: KeepAlive | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenLogprob(Open):
    token: str
    logprob: float


class Logprob(TokenLogprob):
    top_logprobs: list[TokenLogprob] = []


class Metrics(Open):
    done: bool
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    total_duration: int | None = Field(None, description="nanoseconds")
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Logprob] | None = None


class GenerateResponse(Metrics):
    model: str
    created_at: str = Field(description="RFC 3339")
    response: str
    thinking: str | None = None


class ChatResponse(Metrics):
    model: str
    created_at: str
    message: Message


class EmbedRequest(Open):
    model: str
    input: str | list[str]
    truncate: bool | None = True
    dimensions: int | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbedResponse(Open):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsRequest(Open):
    model: str
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsResponse(Open):
    embedding: list[float]


class ModelRequest(Open):
    model: str | None = None
    name: str | None = Field(None, description="older clients send `name`")


class Details(Open):
    parent_model: str = ""
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListedModel(Open):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details
    capabilities: list[str] | None = None


class TagsResponse(Open):
    models: list[ListedModel]


class ShowResponse(Open):
    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class RunningModel(Open):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int
    context_length: int | None = None


class PsResponse(Open):
    models: list[RunningModel]


class ProgressResponse(Open):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class VersionResponse(Open):
    version: str


class ErrorResponse(BaseModel):
    error: str
