"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, for every route of the service
(the simple /api/generate too), so clients and the gateway see one format."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ImageError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.headers = message, param, code, headers


class BadRequest(ImageError):
    pass


class ModelNotFound(ImageError):
    status = 404

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"The model {model!r} does not exist here; this service serves {', '.join(known)}",
                         "model", "model_not_found")


class FileNotFound(ImageError):
    status = 404

    def __init__(self, file_id: str) -> None:
        super().__init__(f"image {file_id!r} does not exist or has expired", "file_id", "not_found")


class QueueFull(ImageError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, retry_after: int, capacity: int) -> None:
        super().__init__(f"The image queue is full ({capacity} waiting); retry after {retry_after} s",
                         None, "queue_full", {"Retry-After": str(retry_after)})


class EngineFailed(ImageError):
    status = 503
    type = "server_error"

    def __init__(self, message: str, code: str = "engine_error") -> None:
        super().__init__(message, None, code)


def body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse(body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a 422 in its own shape; OpenAI clients expect a 400 with `error`.
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ())))
        msg = f"{param}: {first['msg']}" if param else str(first["msg"])
        return JSONResponse(body(msg, "invalid_request_error", param, "invalid_value"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(body(str(exc.detail), "invalid_request_error", None, code), exc.status_code,
                            headers=getattr(exc, "headers", None))
