"""The MT Photos routes on the gateway, in-process: routing to the running vision config, the api-key
header passed through, and a clear error when no vision config runs."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.registry import Registry


class FakeVision:
    """An MT Photos AI service stand-in on loopback that echoes what it received."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.echo)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        started.set()
        self.loop.run_forever()

    async def echo(self, request: web.Request) -> web.Response:
        if request.headers.get("api-key") != "mt_photos_ai_extra":
            return web.json_response({"detail": "Invalid API key"}, status=401)
        body = await request.read()
        return web.json_response({"result": {"path": request.path, "bytes": len(body),
                                             "ctype": request.headers.get("content-type", "")}})


@pytest.fixture
def client(tmp_path):
    def make(running: dict | None) -> TestClient:
        f = tmp_path / "backends.json"
        if running is not None:
            f.write_text(json.dumps(running))
        return TestClient(create_app(Registry(backends_file=f)))

    return make


def test_no_vision_config_running_is_a_clear_503(client):
    with client(None) as c:
        for path in ("/check", "/ocr", "/clip/txt", "/represent", "/restart_v2"):
            r = c.post(path, headers={"api-key": "mt_photos_ai_extra"})
            assert r.status_code == 503
            assert "No MT Photos AI service is running" in r.json()["detail"]
            assert "./start-service.sh mt-photos-cpu" in r.json()["detail"]


def test_routes_forward_to_the_running_vision_config(client):
    fake = FakeVision()
    with client({"mt-photos-cpu": [{"url": fake.url}], "tiny-llm": [{"url": "http://127.0.0.1:9"}]}) as c:
        h = {"api-key": "mt_photos_ai_extra"}
        r = c.post("/ocr", files={"file": ("a.png", b"12345", "image/png")}, headers=h)
        assert r.status_code == 200 and r.json()["result"]["path"] == "/ocr"
        assert r.json()["result"]["ctype"].startswith("multipart/form-data; boundary=")
        r = c.post("/clip/txt", json={"text": "飞机"}, headers=h)
        assert r.json()["result"]["path"] == "/clip/txt" and r.json()["result"]["ctype"] == "application/json"
        for path in ("/check", "/clip/img", "/represent", "/restart", "/restart_v2"):
            assert c.post(path, headers=h).json()["result"]["path"] == path
        wrong = c.post("/check", headers={"api-key": "nope"})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid API key"}


def test_pinned_config_that_is_not_running(client, monkeypatch):
    monkeypatch.setenv("MTPHOTOS_CONFIG", "mt-photos")
    fake = FakeVision()
    with client({"mt-photos-cpu": [{"url": fake.url}]}) as c:
        r = c.post("/check", headers={"api-key": "mt_photos_ai_extra"})
        assert r.status_code == 503 and "MTPHOTOS_CONFIG" in r.json()["detail"]


async def test_home_page_on_the_mtphotos_port_only():
    from gateway.protocols.mtphotos import MTPhotosHome

    sent: list[dict] = []

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"Ollama is running"})

    async def send(msg):
        sent.append(msg)

    app = MTPhotosHome(inner, port=8060)
    for port, expect in ((8060, b"MT Photos AI"), (8080, b"Ollama is running")):
        sent.clear()
        await app({"type": "http", "path": "/", "method": "GET", "server": ("127.0.0.1", port)}, None, send)
        assert expect in sent[-1]["body"]
