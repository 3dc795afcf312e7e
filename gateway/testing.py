"""A fake OpenAI-shaped backend for tests and benchmarks: real HTTP on loopback, scripted behaviour.

Behaviour is chosen per request through the prompt / last message text, so one server can play every
part: `die` (drop the connection mid-stream), `slow:<s>` (wait before answering), `error:<code>`
(answer that status), `hang` (never answer). Otherwise it answers like vLLM: a chat completion, a
completion, embeddings, or an SSE stream of `chunks` chunks ending with usage and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def _text(body: dict[str, Any]) -> str:
    if body.get("messages"):
        content = body["messages"][-1].get("content", "")
        return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else ""


@dataclass
class FakeBackend:
    chunks: int = 32
    model: str = "fake"
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0  # streams the client dropped before the end
    url: str = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = f"http://{host}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        usage = {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}
        return web.json_response({"object": "list", "model": body["model"], "data": data, "usage": usage})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        text = _text(body)
        if text.startswith("slow:"):
            await asyncio.sleep(float(text.split(":")[1]))
        if text == "hang":
            await asyncio.sleep(3600)
        if text.startswith("error:"):
            code = int(text.split(":")[1])
            return web.json_response({"error": {"message": f"scripted {code}", "type": "BadRequestError",
                                                "param": None, "code": code}}, status=code)
        chat = request.path.endswith("chat/completions")
        if body.get("stream"):
            return await self.stream(request, body, chat, die=text == "die")
        return web.Response(body=orjson.dumps(self.reply(body, chat)), content_type="application/json")

    def reply(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        usage = {"prompt_tokens": 5, "completion_tokens": self.chunks, "total_tokens": 5 + self.chunks}
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": "tok " * self.chunks}
        else:
            choice["text"] = "tok " * self.chunks
        return {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model"), "choices": [choice], "usage": usage}

    async def stream(self, request: web.Request, body: dict[str, Any], chat: bool, die: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(self.chunks):
                delta = {"delta": {"content": "tok "}} if chat else {"text": "tok "}
                chunk = {"id": "cmpl-fake", "object": "chat.completion.chunk", "model": body.get("model"),
                         "choices": [{"index": 0, **delta, "finish_reason": None}]}
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if die and i == 2:
                    request.transport.close()  # type: ignore[union-attr]  # the backend "crashes"
                    return resp
                if body.get("_delay"):
                    await asyncio.sleep(body["_delay"])
            usage = {"prompt_tokens": 5, "completion_tokens": self.chunks, "total_tokens": 5 + self.chunks}
            await resp.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        return resp
