"""Activity of a vLLM server, read from its Prometheus /metrics.

Requests go from the gateway straight to vLLM (no proxy hop), so the supervisor cannot count them
itself. Instead it polls vLLM's own metrics: requests running/waiting say "busy now", and the request
and token counters moving between two polls say "used since the last poll" (short requests that
start and finish between polls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Pooling (embeddings) requests move prompt tokens and request_success; generation also moves the rest.
COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)", re.M)


@dataclass(frozen=True)
class Activity:
    busy: float  # requests running + waiting
    total: float  # sum of the monotonic request/token counters

    def used_since(self, before: Activity | None) -> bool:
        return self.busy > 0 or (before is not None and self.total != before.total)


def parse_activity(text: str) -> Activity:
    """Sum the samples (every label set: engines, finish reasons) of the gauges and counters we watch."""
    busy = total = 0.0
    for m in _SAMPLE.finditer(text):
        name = m.group("name")
        if name in BUSY_GAUGES:
            busy += _num(m.group("value"))
        elif name in COUNTERS:
            total += _num(m.group("value"))
    return Activity(busy, total)


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 0.0
