"""The one HTTP client for all backend traffic: pooled connections, per-engine timeouts,
streaming without buffering, and failures mapped to `UpstreamError` (502 connect, 504 timeout).

Protocol modules never open their own client; they call `request()` for whole bodies and
`open_stream()` for streams, so pooling, timeouts and error mapping are decided here once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from gateway.configs import Engine
from gateway.errors import UpstreamError


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float  # longest silence between two reads (a stream's chunks, or the whole wait for a reply)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


# An LLM may think for minutes before its first token; an image on a busy GPU waits in a queue;
# OCR answers in milliseconds, so a silent vision backend is broken long before a minute passes.
READ_DEFAULTS = {Engine.vllm: 600.0, Engine.diffusers: 900.0, Engine.vision: 120.0}


def _engine_timeouts(engine: str, read_default: float) -> Timeouts:
    """UPSTREAM_CONNECT_TIMEOUT_<ENGINE>_S, else UPSTREAM_CONNECT_TIMEOUT_S (5); UPSTREAM_READ_TIMEOUT_<ENGINE>_S."""
    connect = _env_float(f"UPSTREAM_CONNECT_TIMEOUT_{engine.upper()}_S", _env_float("UPSTREAM_CONNECT_TIMEOUT_S", 5))
    return Timeouts(connect, _env_float(f"UPSTREAM_READ_TIMEOUT_{engine.upper()}_S", read_default))


TIMEOUTS: dict[Engine | None, Timeouts] = {None: Timeouts(5, 30)}  # None: admin calls


def load_timeouts() -> dict[Engine | None, Timeouts]:
    """(Re)read the per-engine timeouts from the environment; `Upstream()` calls it, so a new app sees
    the environment of its creation (tests and embedders set it just before)."""
    for engine, read in READ_DEFAULTS.items():
        TIMEOUTS[engine] = _engine_timeouts(engine.value, read)
    return TIMEOUTS


load_timeouts()


@dataclass(slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Stream:
    """An open upstream response whose body is read chunk by chunk, as the backend sends it."""

    def __init__(self, resp: aiohttp.ClientResponse, url: str) -> None:
        self._resp = resp
        self.url = url
        self.status = resp.status
        self.headers = resp.headers
        self.prompt_estimate = 0  # set by forward.py: the prompt's estimated tokens (usage without `usage`)
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the stream closes (finished, failed, or dropped by the client)."""
        self._on_close.append(callback)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamError("timeout", f"backend at {self.url} went silent mid-stream", status=504) from None
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamError("broken", f"backend at {self.url} broke off the stream: {e}") from None
        finally:
            self.close()

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError:
            raise UpstreamError("timeout", f"backend at {self.url} did not answer in time", status=504) from None
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamError("broken", f"backend at {self.url} broke off: {e}") from None
        finally:
            self.close()

    def close(self) -> None:
        # close(), not release(): an unfinished stream must drop the connection so the backend sees
        # the disconnect and cancels the work (vLLM aborts the request). A finished one is released
        # to the pool by aiohttp itself, so close() then costs the connection nothing.
        self._resp.close()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def __del__(self) -> None:
        # A caller that dropped an unread stream must not leak its in-flight count or stream slot.
        if self._on_close:
            self.close()


class Upstream:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        load_timeouts()

    async def start(self) -> None:
        if self._session is None:
            # Idle pooled connections are dropped before the backend's own keep-alive timeout (uvicorn:
            # 5 s) closes them, so a request rarely meets a connection that is closing under it.
            keepalive = _env_float("UPSTREAM_KEEPALIVE_S", 4)
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive, ttl_dns_cache=60)
            # No automatic decompression or header additions: bytes pass through as the backend sent them.
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def open_stream(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = TIMEOUTS[None], data: aiohttp.FormData | None = None,
    ) -> Stream:
        """Send the request and return once the status line and headers arrived."""
        timeout = _client_timeout(timeouts)
        payload = data if data is not None else body
        for attempt in (1, 2):
            try:
                resp = await self.session.request(method, url, data=payload, headers=headers, timeout=timeout,
                                                  allow_redirects=False)
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if isinstance(e, aiohttp.ClientConnectorError):
                    raise UpstreamError("connect", f"cannot connect to backend at {url}: {e.strerror or e}") from None
                # A pooled keep-alive connection the backend closed meanwhile (idle timeout, restart):
                # the backend never took this request, so one more try on a fresh connection is safe.
                if attempt == 2 or data is not None:
                    raise UpstreamError("broken", f"backend at {url} failed: {e}") from None
            except TimeoutError:
                raise UpstreamError("timeout", f"backend at {url} did not answer within {timeouts.read:g} s",
                                    status=504) from None
            except aiohttp.ClientConnectorError as e:
                raise UpstreamError("connect", f"cannot connect to backend at {url}: {e.strerror or e}") from None
            except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as e:
                raise UpstreamError("broken", f"backend at {url} failed: {e}") from None
        return Stream(resp, url)

    async def request(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = TIMEOUTS[None], data: aiohttp.FormData | None = None,
    ) -> Reply:
        stream = await self.open_stream(method, url, body=body, headers=headers, timeouts=timeouts, data=data)
        return Reply(stream.status, stream.headers, await stream.read())


def timeouts_for(engine: Engine) -> Timeouts:
    return TIMEOUTS[engine]


_CLIENT_TIMEOUTS: dict[Timeouts, aiohttp.ClientTimeout] = {}


def _client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    found = _CLIENT_TIMEOUTS.get(t)
    if found is None:
        found = _CLIENT_TIMEOUTS[t] = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
    return found
