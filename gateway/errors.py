"""Error bodies in each protocol's own shape, and the gateway's error types.

Route code raises `GatewayError` subclasses; each protocol module renders them in its own format
(`openai_body`, `ollama_body`, `mtphotos_body`), so one failure reads naturally to every client.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class UnknownModel(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str, available: list[str]) -> None:
        listed = ", ".join(available) if available else "none is running"
        super().__init__(f"The model '{model}' does not exist. Available models: {listed}", param="model")
        self.model = model
        self.available = available


class BackendStopped(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "backend_stopped"

    def __init__(self, model: str, config: str) -> None:
        super().__init__(
            f"The model '{model}' is configured (config '{config}') but not running. "
            f"Start it with: ./start-service.sh {config}",
            param="model",
        )
        self.config = config


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """A backend failed: kind is connect (502), timeout (504), status (backend's own code) or broken."""

    type = "upstream_error"

    def __init__(self, kind: str, message: str, *, status: int = 502, body: bytes = b"") -> None:
        super().__init__(message, status=status, code=f"upstream_{kind}")
        self.kind = kind
        self.body = body


# ---- request bodies ----
BODY_MESSAGES = {
    "openai": ("The request body is empty; expected a JSON object.", "The request body is not valid JSON: {e}",
               "The request body must be a JSON object."),
    # Ollama's own wording, which its clients show as is.
    "ollama": ("missing request body", "invalid JSON in request body: {e}", "request body must be a JSON object"),
}


def json_object(raw: bytes, shape: str = "openai") -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise a 400 worded for the protocol."""
    empty, invalid, not_object = BODY_MESSAGES[shape]
    if not raw.strip():
        raise BadRequest(empty)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(invalid.format(e=e)) from None
    if not isinstance(body, dict):
        raise BadRequest(not_object)
    return body


# ---- renderers ----
def openai_body(err: GatewayError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def ollama_body(err: GatewayError) -> dict[str, Any]:
    if isinstance(err, UnknownModel):
        return {"error": f"model '{err.model}' not found"}
    return {"error": err.message}


def mtphotos_body(err: GatewayError) -> dict[str, Any]:
    # MT Photos' FastAPI services answer auth and HTTP-level failures as {"detail": ...}.
    return {"detail": err.message}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def render(err: GatewayError, shape: str) -> Response:
    body = {"openai": openai_body, "ollama": ollama_body, "mtphotos": mtphotos_body}[shape](err)
    return json_response(body, err.status, err.headers)
