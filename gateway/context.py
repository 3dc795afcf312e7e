"""The gateway's shared parts, reachable from any route as `gw(request)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from gateway.registry import Registry
from gateway.upstream import Upstream


@dataclass
class Gateway:
    registry: Registry
    upstream: Upstream
    # Later parts (auth, limits, usage store, metrics) hang themselves here by name.
    extras: dict[str, Any] = field(default_factory=dict)


def gw(request: Request) -> Gateway:
    return request.app.state.gw
