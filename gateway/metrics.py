"""Gateway metrics on `/metrics`: traffic, latency, errors and streams per protocol, route and model.

Installed by `install(app)` from `create_app()`: a raw ASGI middleware (no BaseHTTPMiddleware, whose
task and queue per request would cost more than everything else here) and the `/metrics` route.

Cost on the hot path, per request: one context-variable set, three clock reads and one cached lookup
of the label children; per streamed chunk: one counter increment. Response bodies are never parsed
on pass-through streams. Tokens are counted only where they are cheap to see:
- non-streamed vLLM replies: the `usage` object, found with `rfind` near the end of the body;
- streamed vLLM replies: the `usage` of the final chunk, which vLLM sends only when the client asked
  for `stream_options.include_usage` (the gateway does not inject it: the bytes are the client's).
vLLM's own `vllm:prompt_tokens_total` / `vllm:generation_tokens_total` are the exact totals.

Labels are bounded: protocol (openai, ollama, mtphotos, other), route (the route *template*, or
"unmatched"), model and config (from the catalog once a request is routed, otherwise "unknown"),
status (the HTTP code), kind (a fixed set). Never a prompt, a user or a key.
"""

from __future__ import annotations

import contextvars
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, RateLimited, UpstreamError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from gateway.configs import Config
    from gateway.registry import Registry, Route

UNKNOWN = "unknown"
METRICS_PATH = "/metrics"
SCOPE_KEY = "modelplat.metrics"  # the request's labels, reachable from the ASGI scope
MTPHOTOS_PREFIXES = ("/check", "/ocr", "/clip/", "/represent", "/restart")

# From a cached OCR answer (ms) to an image on a busy GPU or a long LLM answer (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
ROUTE_LABELS = ["protocol", "route", "model", "config"]

REQUESTS = Counter("modelplat_gateway_requests_total", "requests answered by the gateway", [*ROUTE_LABELS, "status"])
DURATION = Histogram("modelplat_gateway_request_duration_seconds", "time from request to the last byte sent",
                     ROUTE_LABELS, buckets=LATENCY_BUCKETS)
TTFB = Histogram("modelplat_gateway_time_to_first_byte_seconds",
                 "time from request to the first body byte (the first token of a stream)", ROUTE_LABELS,
                 buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("modelplat_gateway_requests_in_flight", "requests being answered now", ["protocol"])
UPSTREAM_ERRORS = Counter("modelplat_gateway_upstream_errors_total",
                          "backend failures: connect, timeout, status, broken", ["protocol", "config", "kind"])
CHUNKS = Counter("modelplat_gateway_stream_chunks_total", "streamed chunks relayed (backend reads, not tokens)",
                 ["protocol", "model", "config"])
TOKENS = Counter("modelplat_gateway_tokens_total", "tokens seen in usage objects (see module doc for coverage)",
                 ["protocol", "model", "config", "kind"])
RATE_LIMITED = Counter("modelplat_gateway_rate_limited_total", "requests rejected by a rate limit",
                       ["protocol", "limit"])


@dataclass(slots=True)
class RequestLabels:
    """Mutable per-request labels: the middleware creates them, routing code fills in model and config."""

    protocol: str
    model: str = UNKNOWN
    config: str = UNKNOWN
    engine: str = ""


# A context variable, so that code deep in a request (forward.py) finds its labels without a request
# object; the value is a mutable object, so streams iterated in a child task see the same labels.
CURRENT: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar("modelplat_metrics", default=None)


def protocol_of(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith(MTPHOTOS_PREFIXES):
        return "mtphotos"
    return "other"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# ---------------------------------------------------------------- labelling (called by routing code)
def label_config(labels: RequestLabels | None, config: Config) -> None:
    if labels is not None:
        labels.model = config.model.served_name
        labels.config = config.name
        labels.engine = config.engine.value


def label_request(request: Request | Scope, config: Config) -> None:
    """For protocol modules: this request serves `config` (its served name becomes the model label)."""
    scope = request.scope if isinstance(request, Request) else request
    label_config(scope.get(SCOPE_KEY), config)


def note_route(route: Route) -> None:
    """Called by forward.py for every request sent to a backend."""
    label_config(CURRENT.get(), route.config)


def current_protocol() -> str:
    labels = CURRENT.get()
    return labels.protocol if labels else "other"


def count_rate_limited(protocol: str | None = None, limit: str = "requests") -> None:
    """For rejections that do not raise `RateLimited` (a raised one is counted by the error handler)."""
    RATE_LIMITED.labels(protocol or current_protocol(), limit).inc()


def count_upstream_error(kind: str, labels: RequestLabels | None = None) -> None:
    labels = labels or CURRENT.get()
    UPSTREAM_ERRORS.labels(labels.protocol if labels else "other", labels.config if labels else UNKNOWN, kind).inc()


def count_tokens(prompt: int, completion: int, labels: RequestLabels | None = None) -> None:
    labels = labels or CURRENT.get()
    if labels is None:
        return
    if prompt:
        TOKENS.labels(labels.protocol, labels.model, labels.config, "prompt").inc(prompt)
    if completion:
        TOKENS.labels(labels.protocol, labels.model, labels.config, "completion").inc(completion)


# ---------------------------------------------------------------- usage (tokens), cheaply
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
USAGE_WINDOW = 400  # bytes after `"usage"`: the usage object, details included


def usage_of(body: bytes) -> tuple[int, int] | None:
    """(prompt, completion) from the last `"usage"` object in an OpenAI-shaped JSON text, or None."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    window = body[i:i + USAGE_WINDOW]
    p, c = _PROMPT.search(window), _COMPLETION.search(window)
    if p is None and c is None:
        return None
    return int(p.group(1)) if p else 0, int(c.group(1)) if c else 0


def observe_reply(status: int, body: bytes) -> None:
    """Called by forward.py with a whole (non-streamed) backend reply: tokens from vLLM's usage."""
    labels = CURRENT.get()
    if labels is None or labels.engine != "vllm" or status != 200:
        return
    usage = usage_of(body)
    if usage:
        count_tokens(*usage, labels=labels)


async def metered(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay a backend stream, counting chunks, mid-stream upstream errors and the final usage."""
    labels = CURRENT.get() or RequestLabels("other")
    counter = CHUNKS.labels(labels.protocol, labels.model, labels.config)
    prev = last = b""
    try:
        async for chunk in chunks:
            counter.inc()
            prev, last = last, chunk
            yield chunk
    except UpstreamError as e:
        count_upstream_error(e.kind, labels)
        raise
    if labels.engine == "vllm":
        # The usage chunk comes last, before `data: [DONE]`, possibly in the same backend read.
        usage = usage_of(prev + last)
        if usage:
            count_tokens(*usage, labels=labels)


# ---------------------------------------------------------------- the middleware
_series: dict[tuple[str, str, str, str, int], tuple[Any, Any, Any]] = {}


def _children(protocol: str, route: str, model: str, config: str, status: int) -> tuple[Any, Any, Any]:
    # labels() takes a lock and builds a key each call; the label space is bounded, so cache the children.
    key = (protocol, route, model, config, status)
    found = _series.get(key)
    if found is None:
        found = _series[key] = (
            REQUESTS.labels(protocol, route, model, config, str(status)),
            DURATION.labels(protocol, route, model, config),
            TTFB.labels(protocol, route, model, config),
        )
    return found


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inflight = {p: IN_FLIGHT.labels(p) for p in ("openai", "ollama", "mtphotos", "other")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        labels = RequestLabels(protocol_of(scope["path"]))
        scope[SCOPE_KEY] = labels
        token = CURRENT.set(labels)
        status = 500  # what the client gets if the app raises before answering
        first: float | None = None
        start = time.perf_counter()

        async def send_metered(message: Message) -> None:
            nonlocal status, first
            if first is None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                else:
                    first = time.perf_counter()
            await send(message)

        inflight = self._inflight[labels.protocol]
        inflight.inc()
        try:
            await self.app(scope, receive, send_metered)
        finally:
            end = time.perf_counter()
            inflight.dec()
            CURRENT.reset(token)
            requests, duration, ttfb = _children(labels.protocol, route_of(scope), labels.model, labels.config,
                                                 status)
            requests.inc()
            duration.observe(end - start)
            if first is not None:
                ttfb.observe(first - start)


# ---------------------------------------------------------------- backends the gateway routes to
class BackendsCollector(Collector):
    """`modelplat_gateway_backends{config}`: replicas in the gateway's backends file, read at scrape time."""

    def __init__(self) -> None:
        self.registry: weakref.ReferenceType[Registry] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("modelplat_gateway_backends", "backend replicas the gateway routes to",
                                   labels=["config", "engine"])
        registry = self.registry() if self.registry else None
        if registry is not None:
            for name, backends in sorted(registry.running().items()):
                cfg = registry.catalog.configs.get(name)
                family.add_metric([name, cfg.engine.value if cfg else UNKNOWN], len(backends))
        yield family


BACKENDS = BackendsCollector()
REGISTRY.register(BACKENDS)


# ---------------------------------------------------------------- installation
async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """Measure every request, serve `/metrics`, and count upstream errors and rate-limit rejections.

    Call after the error handlers are installed: the GatewayError handler is wrapped, so an error
    rendered from any route is counted without each route knowing about metrics.
    """
    app.add_middleware(MetricsMiddleware)
    app.add_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)
    gw = getattr(app.state, "gw", None)
    if gw is not None:
        BACKENDS.registry = weakref.ref(gw.registry)
    render = app.exception_handlers.get(GatewayError)
    if render is None:
        return

    async def counted(request: Request, exc: Exception) -> Response:
        labels = request.scope.get(SCOPE_KEY)
        if isinstance(exc, UpstreamError):
            count_upstream_error(exc.kind, labels)
        elif isinstance(exc, RateLimited):
            count_rate_limited(labels.protocol if labels else None, getattr(exc, "limit", None) or "requests")
        return await render(request, exc)

    app.add_exception_handler(GatewayError, counted)
