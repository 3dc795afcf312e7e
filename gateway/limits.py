"""The gateway's guard: API keys, body size, rate limits, concurrent streams, prompt length, usage.

`Guard` is a raw ASGI middleware (no per-request task or queue) in front of every protocol route:
it authenticates the caller (gateway/auth.py), refuses oversized bodies (413), and admits the
request against the caller's requests-per-minute and tokens-per-minute (429 with `Retry-After`).
Errors leave through the app's GatewayError handler, so they are in the caller's protocol shape and
counted by the metrics. Deeper checks run where the body is known (gateway/forward.py):
`check_prompt` (prompt length against the model's context) and `stream_slot` (concurrent streams
per key). `Usage` batches per-key usage and writes it to the store every `FLUSH_S`.

Settings (environment; 0 = off):
  GATEWAY_RATE_RPM, GATEWAY_RATE_TPM     requests / tokens per minute per key (keys file may override)
  GATEWAY_MAX_STREAMS_PER_KEY            concurrent upstream streams per key
  GATEWAY_MAX_BODY_BYTES                 JSON routes (default 16 MiB: a few inline images fit)
  GATEWAY_MAX_IMAGE_BODY_BYTES           image uploads and image routes (default 64 MiB)
  GATEWAY_CHARS_PER_TOKEN                the cheap prompt estimate (default 4)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request

from gateway import auth
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, RateLimited
from gateway.store import InflightBoard, Periodic, ResilientStore, retry_after, window_now

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from gateway.configs import Config

log = logging.getLogger("gateway.limits")

# Routes anyone may call: liveness, metrics, docs, and what Ollama clients probe before anything else.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json", "/api/version"})
# Routes whose bodies are images (uploads, base64): their own, larger, body limit.
IMAGE_PREFIXES = ("/v1/images/", "/ocr", "/clip/img", "/represent")
PROMPT_PATHS = ("/v1/chat/completions", "/v1/completions")
MIB = 1 << 20


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default


@dataclass
class Settings:
    rpm: int = 0
    tpm: int = 0
    streams: int = 0
    max_body: int = 16 * MIB
    max_image_body: int = 64 * MIB
    chars_per_token: float = 4.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            rpm=_env_int("GATEWAY_RATE_RPM", 0), tpm=_env_int("GATEWAY_RATE_TPM", 0),
            streams=_env_int("GATEWAY_MAX_STREAMS_PER_KEY", 0),
            max_body=_env_int("GATEWAY_MAX_BODY_BYTES", 16 * MIB),
            max_image_body=_env_int("GATEWAY_MAX_IMAGE_BODY_BYTES", 64 * MIB),
            chars_per_token=float(os.environ.get("GATEWAY_CHARS_PER_TOKEN", "4") or 4),
        )

    def body_limit(self, path: str) -> int:
        return self.max_image_body if path.startswith(IMAGE_PREFIXES) else self.max_body


@dataclass
class Hardening:
    """Everything the guard and forward.py share; hung on the gateway as `extras["hardening"]`."""

    settings: Settings
    keys: auth.Keys
    store: ResilientStore
    board: InflightBoard
    usage: Usage = field(init=False)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.usage = Usage(self.store)
        self.admission = Admission(self.store)

    def limit(self, caller: auth.Caller, name: str) -> int:
        own = getattr(caller, name)
        return own if own is not None else getattr(self.settings, name)


# ---------------------------------------------------------------- usage, batched
class Usage:
    """Per-key counters (requests, prompt/completion tokens, images, OCR calls) added in memory on the
    hot path and written to the store in one batch per key every FLUSH_S."""

    FLUSH_S = 0.5

    def __init__(self, store: ResilientStore) -> None:
        self.store = store
        self.pending: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._flusher = Periodic(lambda: self.FLUSH_S)

    def add(self, key: str, **counts: int) -> None:
        bucket = self.pending[key]
        for name, n in counts.items():
            if n:
                bucket[name] += n

    async def flush(self) -> None:
        pending, self.pending = self.pending, defaultdict(lambda: defaultdict(int))
        for key, counts in pending.items():
            await self.store.add_usage(key, dict(counts))

    def start(self) -> None:
        self._flusher.start(self.flush)

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush()


# ---------------------------------------------------------------- admission, leased
class Admission:
    """Requests-per-minute permits taken from the store in leases, so that a busy key costs one store
    round trip per lease instead of one per request. A replica never takes more than the minute has
    left, so replicas together never exceed the limit; a lease's unused permits lapse with its minute.
    Small limits lease one permit at a time (exact); the tokens-per-minute check runs with each lease.
    """

    LEASE_MAX = 32
    LEASE_SHARE = 50  # a lease is at most 1/50 of the limit: a replica never hoards much of the minute
    TOKENS_PER_PERMIT = 50_000  # with a token limit, one permit per this many tokens of it (lag stays small)

    def __init__(self, store: ResilientStore) -> None:
        self.store = store
        self.leases: dict[str, tuple[int, int]] = {}  # key id -> (window, permits left)
        self.fetching: dict[str, asyncio.Future[int]] = {}  # one lease request per key at a time

    def lease_size(self, rpm: int, tpm: int) -> int:
        size = self.LEASE_MAX
        if rpm > 0:
            size = min(size, rpm // self.LEASE_SHARE)
        if tpm > 0:
            size = min(size, tpm // self.TOKENS_PER_PERMIT)
        return max(1, size)

    async def admit(self, key: str, rpm: int, tpm: int) -> int:
        while True:
            window = window_now()[0]
            held = self.leases.get(key)
            if held is not None and held[0] == window and held[1] > 0:
                self.leases[key] = (window, held[1] - 1)
                return 0
            fetching = self.fetching.get(key)
            if fetching is None:
                break
            # Requests arriving together share one lease request instead of each asking the store.
            verdict = await asyncio.shield(fetching)
            if verdict:
                return verdict
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.fetching[key] = done
        verdict = 0
        try:
            verdict, permits = await self.store.admit(key, rpm, tpm, self.lease_size(rpm, tpm))
            if permits:
                self.leases[key] = (window, permits - 1)
            return verdict
        finally:
            del self.fetching[key]
            done.set_result(verdict)


# ---------------------------------------------------------------- checks used by forward.py
def text_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text in an OpenAI chat/completions body (images and other parts not counted)."""
    total = 0
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            # Only text parts count; anything else a client sends (numbers, objects) is the backend's to refuse.
            total += sum(len(t) for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += len(prompt)
    elif isinstance(prompt, list):
        total += sum(len(p) if isinstance(p, str | list) else 1 for p in prompt)
    return total


def check_prompt(h: Hardening | None, config: Config, path: str, raw: bytes | None) -> int:
    """Refuse a prompt that cannot fit the model's context; return the estimated prompt tokens.

    The estimate is cheap on purpose: the body length bounds the text length, so a body that fits is
    never parsed here; only a body long enough to possibly overflow is parsed and its text counted.
    """
    if raw is None or path not in PROMPT_PATHS:
        return 0
    per_token = h.settings.chars_per_token if h else 4.0
    bound = int(len(raw) / per_token)
    limit = config.model.context_length
    if not limit or bound <= limit:
        return bound
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bound
    estimate = int(text_chars(body) / per_token) if isinstance(body, dict) else bound
    if estimate > limit:
        param = "messages" if path.endswith("chat/completions") else "prompt"
        raise BadRequest(f"This model's maximum context length is {limit} tokens; the prompt has about {estimate} "
                         f"tokens (estimated at {per_token:g} characters per token). Shorten it.",
                         param=param, code="context_length_exceeded")
    return estimate


class StreamSlot:
    """One of the caller's concurrent stream slots; released exactly once, when the stream closes, to
    the store that granted it (`granted_by`: Redis may have gone or come back since)."""

    def __init__(self, store: ResilientStore, name: str, granted_by: str) -> None:
        self.store, self.name, self.granted_by, self.released = store, name, granted_by, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # released by garbage collection outside the loop: nothing to schedule on
                return
            task = loop.create_task(self.store.release(self.name, self.granted_by))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def stream_slot(h: Hardening | None, is_stream: Callable[[], bool]) -> StreamSlot | None:
    """Take a stream slot for the current caller, or raise 429 when all of theirs are in use.
    `is_stream` is asked only when a limit applies (it may scan the body)."""
    if h is None:
        return None
    caller = auth.CURRENT.get()
    limit = h.limit(caller, "streams")
    if limit <= 0 or not is_stream():
        return None
    name = f"streams:{caller.id}"
    granted_by = await h.store.acquire(name, limit)
    if granted_by is None:
        err = RateLimited(f"Too many concurrent streams for this API key (limit {limit}); wait for one to finish.",
                          headers={"Retry-After": "1"})
        err.limit = "streams"  # type: ignore[attr-defined]  # the metrics label
        raise err
    return StreamSlot(h.store, name, granted_by)


# ---------------------------------------------------------------- the middleware
class Guard:
    def __init__(self, app: ASGIApp, h: Hardening, shape_of: Callable[[str], str], fastapi: FastAPI) -> None:
        self.app, self.h, self.shape_of, self.fastapi = app, h, shape_of, fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            caller = self.authenticate(scope, path)
            receive = self.limit_body(scope, receive, path)
            await self.admit(caller)
        except GatewayError as e:
            await self.reject(scope, receive, send, e)
            return
        token = auth.CURRENT.set(caller)
        send = self.counting(send, caller, path, scope["method"])
        try:
            await self.app(scope, receive, send)
        finally:
            auth.CURRENT.reset(token)

    def authenticate(self, scope: Scope, path: str) -> auth.Caller:
        keys = self.h.keys
        if not keys.enabled:
            return auth.ANONYMOUS
        mtphotos = self.shape_of(path) == "mtphotos"
        caller = keys.check(auth.presented_key(scope["headers"]), mtphotos=mtphotos)
        if mtphotos and caller.gateway_key:
            scope["headers"] = auth.with_service_key(scope["headers"], keys.mtphotos_service_key)
        return caller

    def limit_body(self, scope: Scope, receive: Receive, path: str) -> Receive:
        limit = self.h.settings.body_limit(path)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise too_large(limit)
                return receive  # the server reads no more than Content-Length
        seen = 0

        async def limited() -> Message:  # chunked upload: count as it arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
            return message

        return limited

    async def admit(self, caller: auth.Caller) -> None:
        rpm, tpm = self.h.limit(caller, "rpm"), self.h.limit(caller, "tpm")
        if rpm <= 0 and tpm <= 0:
            return
        verdict = await self.h.admission.admit(caller.id, rpm, tpm)
        if verdict:
            what, limit = ("requests", rpm) if verdict == 1 else ("tokens", tpm)
            wait = retry_after()
            err = RateLimited(f"Rate limit reached: {limit} {what} per minute for this API key. "
                              f"Try again in {wait} s.", headers={"Retry-After": str(wait)})
            err.limit = what  # type: ignore[attr-defined]  # the metrics label
            raise err

    def counting(self, send: Send, caller: auth.Caller, path: str, method: str) -> Send:
        """Count the request, and the images / OCR calls a successful answer carries."""
        usage = self.h.usage
        usage.add(caller.id, requests=1)
        if method == "POST" and path.startswith("/v1/images/"):
            return count_images(send, usage, caller.id)
        if path == "/ocr":
            return count_ok(send, usage, caller.id, "ocr_calls")
        return send

    async def reject(self, scope: Scope, receive: Receive, send: Send, err: GatewayError) -> None:
        handler = self.fastapi.exception_handlers[GatewayError]  # metrics wraps it: rejections are counted
        response = await handler(Request(scope, receive), err)
        await response(scope, receive, send)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than this route's limit of {limit} bytes.")


def count_ok(send: Send, usage: Usage, key: str, name: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] < 400:
            usage.add(key, **{name: 1})
        await send(message)

    return wrapped


def count_images(send: Send, usage: Usage, key: str) -> Send:
    ok = False

    async def wrapped(message: Message) -> None:
        nonlocal ok
        if message["type"] == "http.response.start":
            ok = message["status"] < 400
        elif ok:
            body = message.get("body", b"")
            usage.add(key, images=body.count(b'"b64_json"') + body.count(b'"url"'))
        await send(message)

    return wrapped


# ---------------------------------------------------------------- installation
def install(app: FastAPI, gateway: Any, shape_of: Callable[[str], str]) -> Hardening:
    """Wire the guard into the app: middleware, store lifecycle, usage flushing, in-flight sync, /gateway/usage."""
    from gateway import store as store_mod

    store = store_mod.from_env()
    registry = gateway.registry
    h = Hardening(Settings.from_env(), auth.Keys(), store, InflightBoard(store, registry.inflight))
    gateway.extras["hardening"] = h

    def shared_urls() -> list[str]:
        return [b.url for lst in registry.running().values() if len(lst) > 1 for b in lst]

    async def startup(_: Any) -> None:
        await store.start()
        h.usage.start()
        if store.redis is not None:  # one replica: nothing to share
            h.board.start(shared_urls)
        freeze_startup_heap()

    async def shutdown(_: Any) -> None:
        await h.board.stop()
        await h.usage.stop()
        await store.close()

    gateway.extras.setdefault("startup", []).append(startup)
    gateway.extras.setdefault("shutdown", []).append(shutdown)
    app.add_middleware(Guard, h=h, shape_of=shape_of, fastapi=app)
    document_streams(app)
    app.add_api_route("/gateway/usage", usage_route(h), methods=["GET"], tags=["gateway"],
                      response_model=UsageReport, summary="Usage of the calling API key")
    return h


def freeze_startup_heap() -> None:
    """In the gateway server (`python -m gateway`), move everything built at startup (FastAPI, pydantic,
    the catalog: most of the heap) out of the garbage collector's sight, and again a little later for what
    the first requests import lazily (no collection then: freezing alone costs no pause). Full collections
    then scan only what requests create, instead of pausing 30-45 ms and setting the p99.
    Not in embedders and tests, which build many apps in one process (frozen objects are never collected)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "gateway.__main__":
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for delay in (10, 60):
            loop.call_later(delay, gc.freeze)


class UsageReport(BaseModel):
    key_id: str
    store: str
    usage: dict[str, int]


def usage_route(h: Hardening) -> Callable[[], Any]:
    async def usage() -> UsageReport:
        """The calling key's totals: requests, prompt/completion tokens, images, OCR calls (all replicas)."""
        caller = auth.CURRENT.get()
        await h.usage.flush()
        return UsageReport(key_id=caller.id, store=h.store.kind, usage=await h.store.usage(caller.id))

    return usage


# ---------------------------------------------------------------- OpenAPI: the errors every route may answer
_ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "openai": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}}}}},
    "ollama": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "mtphotos": {"type": "object", "properties": {"detail": {}, "result": {}, "msg": {"type": "string"}}},
}
_ERROR_CODES = {
    400: "Invalid request", 401: "Missing or invalid API key", 404: "Unknown model or path",
    413: "Request body too large for this route", 422: "Invalid request", 429: "Rate limit or stream limit reached",
    502: "The backend failed or is unreachable", 503: "The model is configured but not running",
    504: "The backend did not answer in time",
}


def error_docs(shape: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a protocol's router: the gateway's errors, in that protocol's shape, so clients
    and schema-driven tools (the fuzz tests) know every status a route may answer."""
    content = {"application/json": {"schema": _ERROR_SCHEMAS[shape]}}
    return {code: {"description": text, "content": content} for code, text in _ERROR_CODES.items()}


# Streaming answers are not JSON: say so in the document (the routes declare their JSON form only).
STREAM_MEDIA = {"/v1/chat/completions": "text/event-stream", "/v1/completions": "text/event-stream",
                "/api/chat": "application/x-ndjson", "/api/generate": "application/x-ndjson",
                "/api/pull": "application/x-ndjson"}


def document_streams(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        doc = generate()
        if fresh:
            for path, media in STREAM_MEDIA.items():
                op = doc.get("paths", {}).get(path, {}).get("post")
                if op is not None:
                    ok = op.setdefault("responses", {}).setdefault("200", {"description": "Successful Response"})
                    ok.setdefault("content", {}).setdefault(media, {})
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
