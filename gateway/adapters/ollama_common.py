"""Small pure pieces shared by the Ollama translation modules: time stamps, durations, options, format, think.

Nothing here does I/O; bad input raises `BadRequest`, which the routes render as Ollama's `{"error": ...}`.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from gateway.configs import Capability, Config
from gateway.errors import BadRequest

# ---------------------------------------------------------------- time


def rfc3339(ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, as Ollama writes `created_at`."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m"); negative = forever (inf).

    None when absent. Raises BadRequest on anything else, with Go's wording.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"invalid keep_alive: {value!r}", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_go_duration(value.strip())
    else:
        raise BadRequest(f"invalid keep_alive: {value!r}", param="keep_alive")
    return math.inf if seconds < 0 else seconds


def _parse_go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # a bare number is seconds
    except ValueError:
        pass
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise BadRequest(f'time: invalid duration "{text}"', param="keep_alive")
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


# ---------------------------------------------------------------- options

# Ollama option -> vLLM sampling parameter (vLLM reads the non-OpenAI ones from the body as well).
FLOAT_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "min_p": "min_p",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
INT_OPTIONS = {"top_k": "top_k", "seed": "seed"}
# vLLM-only extras a caller may put in `options` (not Ollama's; documented as a gateway extension).
EXTRA_OPTIONS: dict[str, type] = {"ignore_eos": bool, "min_tokens": int}


def _number(name: str, value: Any, integer: bool) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f'option "{name}" must be {kind}, got {value!r}', param=f"options.{name}")
    return value


def map_options(options: Any, cfg: Config) -> dict[str, Any]:
    """Ollama `options` -> OpenAI/vLLM sampling fields. Unknown or engine-only options are ignored, as Ollama does."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object", param="options")
    out: dict[str, Any] = {}
    for name, target in FLOAT_OPTIONS.items():
        if options.get(name) is not None:
            out[target] = _number(name, options[name], integer=False)
    for name, target in INT_OPTIONS.items():
        if options.get(name) is not None:
            out[target] = _number(name, options[name], integer=True)
    for name, kind in EXTRA_OPTIONS.items():
        if options.get(name) is not None:
            if not isinstance(options[name], kind) or (kind is int and isinstance(options[name], bool)):
                raise BadRequest(f'option "{name}" must be {kind.__name__}', param=f"options.{name}")
            out[name] = options[name]
    if (stop := options.get("stop")) is not None:
        out["stop"] = _stop_list(stop)
    limit = context_limit(options.get("num_ctx"), cfg)
    num_predict = options.get("num_predict")
    if num_predict is not None:
        num_predict = _number("num_predict", num_predict, integer=True)
        # -1 (no limit) and -2 (fill the context) both mean "up to the context", vLLM's own default.
        if num_predict > 0:
            out["max_tokens"] = min(num_predict, limit) if limit else num_predict
    return out


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise BadRequest('option "stop" must be a string or a list of strings', param="options.stop")


def context_limit(num_ctx: Any, cfg: Config) -> int | None:
    """The context a request may use: num_ctx, capped at the model's length (Ollama caps it the same way)."""
    model_ctx = cfg.model.context_length or (cfg.vllm.max_model_len if cfg.vllm else None)
    if num_ctx is None:
        return model_ctx
    num_ctx = _number("num_ctx", num_ctx, integer=True)
    if num_ctx <= 0:
        raise BadRequest(f'option "num_ctx" must be positive, got {num_ctx}', param="options.num_ctx")
    return min(num_ctx, model_ctx) if model_ctx else num_ctx


# ---------------------------------------------------------------- format, think, capabilities


def map_format(fmt: Any) -> dict[str, Any] | None:
    """`format`: "json" -> JSON mode; a JSON schema -> structured output that follows it."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise BadRequest(f'invalid format: expected "json" or a JSON schema object, got {fmt!r}', param="format")


THINK_LEVELS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def check_think(think: Any, cfg: Config, model: str) -> bool | None:
    """Validate `think`; returns True (show thinking), False (suppress it) or None (model default)."""
    if think is None:
        return None
    if isinstance(think, str):
        if think not in THINK_LEVELS:
            raise BadRequest(f'invalid think value: "{think}" (want true, false, low, medium, high or max)',
                             param="think")
    elif not isinstance(think, bool):
        raise BadRequest(f"invalid think value: {think!r}", param="think")
    if think is False:
        return False
    require(cfg, Capability.thinking, model, "thinking")
    return True


def think_fields(think: Any, cfg: Config) -> dict[str, Any]:
    """Request fields that switch reasoning on or off in vLLM's chat template and sampling."""
    if Capability.thinking not in cfg.model.capabilities or think is None:
        return {}
    out: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": think is not False}}
    if isinstance(think, str):
        out["reasoning_effort"] = THINK_LEVELS[think]
    return out


def require(cfg: Config, cap: Capability, model: str, what: str | None = None) -> None:
    if cap not in cfg.model.capabilities:
        raise BadRequest(f'"{model}" does not support {what or cap.value}')

