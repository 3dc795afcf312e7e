"""The backend's OpenAI SSE stream -> Ollama NDJSON objects, incrementally (chunk in, objects out).

`SSEParser` turns raw bytes (events may be split anywhere across TCP chunks) into `data:` payloads.
`Translator` turns those payloads into Ollama chunks (`message.content`/`response`, `thinking`,
`tool_calls` with arguments as JSON objects) and builds the final `done` object with the metrics from
the backend's usage and the gateway's clock. The same translator folds a stream into one reply for
`stream: false`. The clock is injected so tests are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.adapters.ollama_common import rfc3339

DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "abort": "stop"}


class StreamFailed(Exception):
    """The backend reported an error inside the stream, or ended it before finishing."""

    partial: list[dict[str, Any]] = []  # noqa: RUF012 (replaced per instance by Translator.feed)


class SSEParser:
    """Incremental server-sent-events parser: feed bytes, get complete `data:` payloads."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        out: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return out
            line, self._buf = self._buf[:nl].rstrip(b"\r"), self._buf[nl + 1:]
            if not line:  # a blank line ends the event
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # comments (":"), "event:", "id:" and "retry:" lines carry nothing the translation needs

    def pending(self) -> bool:
        return bool(self._buf.strip() or self._data)


@dataclass
class Timing:
    """Monotonic nanosecond marks taken by the gateway."""

    start: int  # request received
    opened: int | None = None  # backend answered with headers
    first: int | None = None  # first generated token arrived
    last: int | None = None  # last token arrived
    load_ns: int = 0  # time spent loading the model for this request, if any


@dataclass
class _Call:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class Translator:
    kind: str  # "chat" or "generate"
    model: str
    timing: Timing
    show_thinking: bool = True
    clock: Callable[[], int] = time.monotonic_ns
    wall: Callable[[], int] = time.time_ns
    parser: SSEParser = field(default_factory=SSEParser)
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    finished: bool = False  # [DONE] seen

    # ---- streaming ----
    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """Raw bytes from the backend -> Ollama chunks to send now (possibly none)."""
        out: list[dict[str, Any]] = []
        try:
            for data in self.parser.feed(chunk):
                if data.strip() == b"[DONE]":
                    self.finished = True
                    continue
                obj = self._event(data)
                if obj is not None:
                    out.append(obj)
        except StreamFailed as e:
            e.partial = out  # what came before the failure in the same chunk still goes out
            raise
        return out

    def _event(self, data: bytes) -> dict[str, Any] | None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamFailed(f"backend sent an unreadable event: {data[:200]!r}") from None
        if not isinstance(event, dict):
            raise StreamFailed("backend sent an event that is not an object")
        if "error" in event or event.get("object") == "error":
            raise StreamFailed(error_message(event))
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        text, think, calls = self._delta(choice)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if text or think:
            now = self.clock()
            self.timing.first = self.timing.first or now
            self.timing.last = now
        ready_calls = self.tool_calls() if self.finish_reason and self.calls and calls else None
        think = think if self.show_thinking else ""
        lps = ollama_logprobs(choice.get("logprobs"))
        if not (text or think or ready_calls or lps):
            return None  # e.g. vLLM's role-only first chunk: Ollama never sends an empty chunk
        obj = self._chunk(text, think, ready_calls)
        if lps:
            self.logprobs += lps
            obj["logprobs"] = lps
        return obj

    def _delta(self, choice: dict[str, Any]) -> tuple[str, str, bool]:
        if self.kind == "generate" and "text" in choice:  # /v1/completions
            text = choice.get("text") or ""
            self.content.append(text)
            return text, "", False
        delta = choice.get("delta") or choice.get("message") or {}
        text = delta.get("content") or ""
        think = delta.get("reasoning_content") or delta.get("reasoning") or ""
        self.content.append(text)
        self.thinking.append(think)
        calls = delta.get("tool_calls") or []
        for tc in calls:
            self._add_call(tc)
        return text, think, bool(calls) or (bool(self.calls) and bool(choice.get("finish_reason")))

    def _add_call(self, tc: dict[str, Any]) -> None:
        call = self.calls.setdefault(tc.get("index", len(self.calls)), _Call())
        call.id = call.id or tc.get("id")
        fn = tc.get("function") or {}
        call.name += fn.get("name") or ""
        call.arguments += fn.get("arguments") or ""

    def tool_calls(self) -> list[dict[str, Any]]:
        out = []
        for i, c in sorted(self.calls.items()):
            call: dict[str, Any] = {"function": {"index": i, "name": c.name, "arguments": parse_arguments(c.arguments)}}
            if c.id:
                call["id"] = c.id
            out.append(call)
        return out

    def _chunk(self, text: str, think: str, calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": rfc3339(self.wall())}
        if self.kind == "chat":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if think:
                msg["thinking"] = think
            if calls:
                msg["tool_calls"] = calls
            obj["message"] = msg
        else:
            obj["response"] = text
            if think:
                obj["thinking"] = think
        obj["done"] = False
        return obj

    # ---- the end ----
    def complete(self) -> bool:
        return self.finish_reason is not None or self.finished

    def final(self) -> dict[str, Any]:
        """The `done: true` object that ends a stream (empty content, metrics)."""
        if not self.complete():
            raise StreamFailed("backend ended the stream before the reply was complete")
        obj = self._chunk("", "", None)
        obj.update(done=True, done_reason=DONE_REASONS.get(self.finish_reason or "stop", "stop"))
        obj.update(self.metrics())
        return obj

    def whole(self) -> dict[str, Any]:
        """For `stream: false`: everything folded into one object."""
        obj = self.final()
        text = "".join(self.content)
        think = "".join(self.thinking) if self.show_thinking else ""
        if self.kind == "chat":
            obj["message"]["content"] = text
            if think:
                obj["message"]["thinking"] = think
            if self.calls:
                obj["message"]["tool_calls"] = self.tool_calls()
        else:
            obj["response"] = text
            if think:
                obj["thinking"] = think
        if self.logprobs:
            obj["logprobs"] = self.logprobs
        return obj

    def metrics(self) -> dict[str, int]:
        t, end = self.timing, self.clock()
        opened = t.opened or t.start
        first = t.first or end
        out = {
            "total_duration": end - t.start,
            "load_duration": t.load_ns,
            "prompt_eval_duration": max(0, first - opened),
            "eval_duration": max(0, (t.last or first) - first),
        }
        if "prompt_tokens" in self.usage:
            out["prompt_eval_count"] = int(self.usage["prompt_tokens"])
        if "completion_tokens" in self.usage:
            out["eval_count"] = int(self.usage["completion_tokens"])
        return out


def ollama_logprobs(lp: Any) -> list[dict[str, Any]]:
    """A choice's logprobs (chat: `content` entries; completions: parallel lists) -> Ollama's list."""
    if not isinstance(lp, dict):
        return []
    if isinstance(lp.get("content"), list):  # chat completions
        return [{"token": e.get("token", ""), "logprob": e.get("logprob", 0.0),
                 "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0)}
                                  for t in e.get("top_logprobs") or []]} for e in lp["content"]]
    tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    return [{"token": tok, "logprob": val if val is not None else 0.0,
             "top_logprobs": [{"token": k, "logprob": v} for k, v in (top or {}).items()]}
            for tok, val, top in zip(tokens, values, tops, strict=False)]


def parse_arguments(raw: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments -> Ollama's object. Text that is not a JSON object is kept under "raw"."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}


def error_message(body: Any) -> str:
    """The message of a vLLM/OpenAI error body, whichever of its shapes it has."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        if isinstance(err, str):
            return err
        if "message" in body:
            return str(body["message"])
    return str(body)
