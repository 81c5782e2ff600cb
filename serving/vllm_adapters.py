"""API-server side of a LoReFT adapter server: the admin endpoint and the per-adapter prefix cache.

Added to vLLM's OpenAI server as ASGI middleware (`--middleware
factflow.serving.vllm_adapters.AdapterAdmin`, which `plugin_server_args` passes for a LoReFT
folder, with `--worker-extension-cls factflow.serving.vllm_reft.ReftWorkerExtension`). Two jobs:

* Admin endpoint, loading and unloading adapters without a restart:

      GET    /v1/factflow/adapters            -> loaded adapters, default, capacity, layers, rank cap
      POST   /v1/factflow/adapters            {"name": "facts-v3", "path": "/abs/adapter/folder"}
      DELETE /v1/factflow/adapters/{name}

  The engine does the work (`ReftWorkerExtension` through vLLM's `collective_rpc`) and validates
  the folder: a bad one is a 400 whose message names the problem and the fix, a full server or a
  name in use a 409, an unknown name on DELETE a 404. vLLM's `--api-key` guards these routes as it
  guards `/v1`. Unloading is immediate for new requests (400 naming the loaded ones); requests
  already admitted finish with the adapter.

* Prefix cache keyed per adapter: an adapter changes the keys and values of every later layer, so
  two adapters must never share cached prompt blocks. vLLM mixes a request's `cache_salt` into the
  hash of its first block, and so into every later block's hash (each hashes its parent; see
  vllm/v1/core/kv_cache_utils.py, `generate_block_hash_extra_keys`). This middleware sets the salt
  on every completion, chat, responses and messages request from the adapter the request will get
  (its own, the server's default, or the base) and that adapter's file digest, so no client has to
  remember it and a re-loaded adapter with new weights never meets the old one's blocks; a
  client's own salt is kept (hashed) after ours. Requests on other routes may not name an adapter
  (400): they run with the server's default, unsalted, and nothing else is unsalted.

The registry of loaded names lives in this process: `SteeringArgs.validate_params`
(`serving/vllm_steering.py`) reads it to reject unknown names at admission.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factflow.serving.vllm_steering import ADAPTER_ARG, BASE_ADAPTER

__all__ = ["ADMIN_PATH", "AdapterAdmin", "REGISTRY", "Registry", "salt_for"]

ADMIN_PATH = "/v1/factflow/adapters"
# routes whose request body has vLLM's `cache_salt` field
SALTED_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")


@dataclass
class Registry:
    """The engine's loaded adapters as this API server last heard them."""

    digests: dict[str, str] = field(default_factory=dict)  # name -> digest of its files
    default: str | None = None
    synced: bool = False

    def update(self, info: dict[str, Any]) -> None:
        self.digests = {name: str(meta["digest"]) for name, meta in info["adapters"].items()}
        self.default = info.get("default")
        self.synced = True


REGISTRY = Registry()


def salt_for(adapter: str | None, registry: Registry = REGISTRY) -> str | None:
    """Cache salt of a request naming `adapter` (None: names none); None for a name not loaded."""
    name = adapter if adapter is not None else registry.default
    if name is None or name == BASE_ADAPTER:
        return "factflow-reft:base"
    digest = registry.digests.get(name)
    return None if digest is None else f"factflow-reft:{name}:{digest}"


def _error(status: int, message: str) -> JSONResponse:
    # the shape of vLLM's own error responses
    return JSONResponse({"error": {"message": message, "type": "BadRequestError" if status < 500 else
                                   "InternalServerError", "code": status}}, status_code=status)  # fmt: skip


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class AdapterAdmin:
    """Pure ASGI middleware: answers the admin routes, salts generation requests per adapter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lock = asyncio.Lock()  # one load/unload/sync at a time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path == ADMIN_PATH or path.startswith(ADMIN_PATH + "/"):
            await self._guarded_admin(scope, receive, send, path)
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        body, refusal = await self._salted(scope, path, body)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later messages (disconnect) come from the client as usual

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)

    async def _sync(self, scope: Scope) -> None:
        if not REGISTRY.synced:
            async with self.lock:
                if not REGISTRY.synced:
                    REGISTRY.update(await self._rpc(scope, "factflow_adapters"))

    @staticmethod
    async def _rpc(scope: Scope, method: str, *args: Any) -> dict[str, Any]:
        engine = scope["app"].state.engine_client
        results = await engine.collective_rpc(method, args=args)
        return dict(results[0])

    async def _salted(self, scope: Scope, path: str, body: bytes) -> tuple[bytes, JSONResponse | None]:
        """The body with our cache salt set, or a refusal; bodies we can't read pass unchanged."""
        try:
            data = json.loads(body)
        except ValueError:
            return body, None
        if not isinstance(data, dict):
            return body, None
        xargs = data.get("vllm_xargs")
        adapter = xargs.get(ADAPTER_ARG) if isinstance(xargs, dict) else None
        if path not in SALTED_ROUTES:
            if adapter is not None:
                message = (f"{ADAPTER_ARG} is served on {', '.join(SALTED_ROUTES)} only (their prefix cache "
                           f"is kept per adapter); {path} runs the server's default adapter")  # fmt: skip
                return body, _error(400, message)
            return body, None
        if adapter is not None and not isinstance(adapter, str):
            return body, None  # SteeringArgs.validate_params answers with the 400
        await self._sync(scope)
        salt = salt_for(adapter)
        if salt is None:
            return body, None  # not loaded: validate_params answers with the 400 listing the loaded ones
        theirs = data.get("cache_salt")
        if isinstance(theirs, str) and theirs:  # hashed: vLLM caps a salt at 128 characters
            salt += "|" + hashlib.sha256(theirs.encode()).hexdigest()[:16]
        data["cache_salt"] = salt
        return json.dumps(data).encode(), None

    async def _guarded_admin(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        from vllm import envs
        from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

        async def admin(scope: Scope, receive: Receive, send: Send) -> None:
            response = await self._admin(scope, receive, path)
            await response(scope, receive, send)

        args = getattr(scope["app"].state, "args", None)
        tokens = [key for key in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if key]
        handler: ASGIApp = AuthenticationMiddleware(admin, tokens=tokens) if tokens else admin
        await handler(scope, receive, send)

    async def _admin(self, scope: Scope, receive: Receive, path: str) -> JSONResponse:
        method = scope.get("method")
        name = path.removeprefix(ADMIN_PATH).strip("/")
        if method == "GET" and not name:
            async with self.lock:
                info = await self._rpc(scope, "factflow_adapters")
                REGISTRY.update(info)
            info.pop("status", None)
            return JSONResponse(info)
        if method == "POST" and not name:
            try:
                request = json.loads(await _read_body(receive))
            except ValueError:
                request = None
            if not (isinstance(request, dict) and isinstance(request.get("name"), str)
                    and isinstance(request.get("path"), str)):  # fmt: skip
                return _error(400, 'send a JSON object {"name": "NAME", "path": "/adapter/folder"}; the '
                                   "folder is one written by `factflow reft train`, on the server's machine")
            async with self.lock:
                info = await self._rpc(scope, "factflow_load_adapter", request["name"], request["path"])
                REGISTRY.update(info)
        elif method == "DELETE" and name:
            async with self.lock:
                info = await self._rpc(scope, "factflow_unload_adapter", name)
                REGISTRY.update(info)
        else:
            allowed = "GET, POST" if not name else "DELETE"
            usage = f"GET/POST {ADMIN_PATH}, DELETE {ADMIN_PATH}/NAME"
            return _error(405, f"{method} {path}: use {allowed} ({usage})")
        status = int(info.pop("status"))
        if status != 200:
            return _error(status, str(info.get("error")))
        return JSONResponse(info)
