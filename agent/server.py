"""The agent as an OpenAI-compatible HTTP server: `factflow serve --agent` (FastAPI + uvicorn).

    GET  /v1/models            the agent, as one model id ("factflow-agent")
    POST /v1/chat/completions  one agent turn per request, streamed (SSE) or not
    POST /v1/feedback          feedback on a thread's last answer (the ACE learn path)
    GET  /healthz              liveness, which backend and tool-call format the agent uses

The agent keeps each thread's history itself (checkpointed), so only the last user message of a
request is the question; earlier messages a client sends are not replayed. Thread: the `user`
field (created on first use) or the `X-Factflow-Thread` header (must exist: it was returned by an
earlier response); neither = a new thread. Namespace: `X-Factflow-Namespace` (default: the
configured one). Answers keep their `[fact-id]` markers; each response carries a `factflow` object
with the cited facts, the playbook bullets used and the write-back decision.

One thread runs one turn at a time (a lock per thread); different threads run concurrently. A
turn that fails (e.g. the model backend died) is rolled back to the thread's previous checkpoint
and answered with 503, so the thread is intact and works again once the backend is back.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from factflow.agent.api import Agent, AskResult, StreamEvent
from factflow.errors import UserError
from factflow.settings import Settings

__all__ = [
    "AGENT_MODEL_ID",
    "ApiError",
    "AgentHub",
    "AgentServerThread",
    "StreamText",
    "check_bind",
    "create_app",
    "serve_agent",
]

log = logging.getLogger(__name__)

AGENT_MODEL_ID = "factflow-agent"
_THREAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")
_CHARS_PER_CONTEXT_TOKEN = 8  # a question longer than this many chars per context token is refused unread
_T = TypeVar("_T")


class ApiError(Exception):
    """An error answered as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning the model backend is gone (refused, reset, timed out, 5xx)."""
    import httpx
    import openai

    return (openai.APIConnectionError, openai.InternalServerError, httpx.TransportError)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose an agent without a token beyond this machine."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise UserError(
            f"refusing to listen on {host} without a token: set FACTFLOW_AGENT_TOKEN "
            "(clients send it as a bearer token) or use --host 127.0.0.1"
        )


class StreamText:
    """The streamed answer kept a prefix of the final one.

    The `cite` node edits the raw answer after generation: unknown `[id]` markers are removed,
    runs of blanks collapsed, ends stripped and citation markers appended. So text from the first
    `[` on, and trailing blanks, are held back until the final answer is known; everything sent
    earlier is already what the final answer starts with, and the chunks join to it exactly.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.sent = ""

    def feed(self, piece: str) -> str:
        self.raw += piece
        safe = self.raw.split("[", 1)[0]
        safe = re.sub(r"[ \t]{2,}", " ", safe).lstrip().rstrip()
        return self._advance(safe)

    def finish(self, answer: str) -> str:
        rest = self._advance(answer)
        if self.sent != answer:  # cannot happen with the cite node's edits; say so if it does
            log.warning("streamed text is not a prefix of the final answer")
        return rest

    def _advance(self, target: str) -> str:
        if not target.startswith(self.sent) or len(target) <= len(self.sent):
            return ""
        out, self.sent = target[len(self.sent) :], target
        return out


class AgentHub:
    """The agents behind the server: one per namespace (each with its playbook), sharing the
    model, the fact store and the thread checkpointer."""

    def __init__(self, settings: Settings, agent: Agent | None = None) -> None:
        self.settings = settings
        self.default = agent or Agent(settings)
        self.agents: dict[str, Agent] = {self.default.namespace: self.default}
        self.locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # turns block on the model; the default executor (cores + 4 threads) would cap concurrency
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="factflow-turn")

    def agent(self, namespace: str | None) -> Agent:
        ns = namespace or self.default.namespace
        from factflow.memory.store import validate_namespace

        try:
            validate_namespace(ns)
        except UserError as exc:
            raise ApiError(400, f"X-Factflow-Namespace: {exc}", "invalid_namespace") from None
        with self._guard:
            if ns not in self.agents:
                self.agents[ns] = Agent(
                    self.settings,
                    chat_model=self.default.chat_model,
                    store=self.default.store,
                    checkpointer=self.default.checkpointer,
                    namespace=ns,
                )
            return self.agents[ns]

    def lock(self, agent: Agent, thread: str) -> threading.Lock:
        with self._guard:
            return self.locks.setdefault(f"{agent.namespace}/{thread}", threading.Lock())

    async def run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for agent in self.agents.values():  # closing the shared store twice is a no-op
            if agent is not self.default:
                agent.close()
        self.default.close()


def _state(agent: Agent, thread: str) -> Any:
    return agent.graph.get_state(agent._config(thread))


def _exists(agent: Agent, thread: str) -> bool:
    return bool(_state(agent, thread).values.get("question"))


def _rollback(agent: Agent, thread: str, before: Any) -> None:
    """Make the checkpoint from before the failed turn the thread's latest again."""
    try:
        if before.values:
            agent.graph.update_state(before.config, None, as_node="__copy__")
        else:
            agent.delete_thread(thread)
    except Exception:  # noqa: BLE001 - the turn's own error is what the client must see
        log.exception("could not roll back thread %s", thread)


def _guarded(agent: Agent, thread: str, lock: threading.Lock, body: Callable[[], _T]) -> _T:
    """Run `body` as the thread's only turn; on failure restore the thread's previous state."""
    with lock:
        before = _state(agent, thread)
        try:
            return body()
        except BaseException:
            _rollback(agent, thread, before)
            raise


def _translate(exc: BaseException, backend: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UserError):
        return ApiError(400, str(exc), "invalid_request")
    if isinstance(exc, _backend_errors()):
        return ApiError(
            503,
            f"the model backend at {backend} is unreachable ({type(exc).__name__}); the turn was not "
            "recorded and the thread is unchanged: retry when the backend is back",
            "backend_unavailable",
            "server_error",
        )
    log.error("agent turn failed", exc_info=exc)
    return ApiError(
        500, f"internal error ({type(exc).__name__}); see the server log", "internal_error", "server_error"
    )


# -- request bodies --------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The parts of OpenAI's chat request the agent uses; sampling options are the agent's own."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message]
    stream: bool = False
    user: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: str = Field(description="The thread whose last answer the feedback is about.")
    feedback: str | dict[str, Any] | list[Any] = Field(description="'correct', 'wrong: ...', or a result.")


def _question(body: ChatRequest, settings: Settings) -> str:
    if not body.messages:
        raise ApiError(400, "messages is empty: send at least one user message", "empty_messages")
    last = body.messages[-1]
    if last.role != "user":
        raise ApiError(400, f"the last message must be the user's question, not {last.role!r}", "no_question")
    content = last.content
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    question = (content or "").strip()
    if not question:
        raise ApiError(400, "the last user message has no text: send a question", "empty_question")
    if len(question) > settings.context_window * _CHARS_PER_CONTEXT_TOKEN:
        raise ApiError(
            400,
            f"the question is too long ({len(question)} characters) for the context window of "
            f"{settings.context_window} tokens; shorten it",
            "input_too_long",
        )
    return question


def _thread(body: ChatRequest, header: str | None, agent: Agent) -> tuple[str, bool]:
    """(thread id, whether it must already exist)."""
    thread, must_exist = (header, True) if header else (body.user, False) if body.user else (None, False)
    if thread is None:
        return uuid.uuid4().hex[:12], False
    if not _THREAD_RE.match(thread):
        raise ApiError(
            400, f"invalid thread id {thread!r}: use 1-128 letters, digits and . _ : @ -", "invalid_thread"
        )
    if must_exist and not _exists(agent, thread):
        raise ApiError(
            404, f"unknown thread {thread!r}: omit X-Factflow-Thread to start one", "unknown_thread"
        )
    return thread, must_exist


def _factflow(agent: Agent, thread: str, result: AskResult) -> dict[str, Any]:
    facts = (
        agent.store.get_many(result.cited_fact_ids, namespace=agent.namespace)
        if result.cited_fact_ids
        else []
    )
    messages = _state(agent, thread).values.get("messages", [])
    return {
        "thread_id": thread,
        "namespace": agent.namespace,
        "turns": sum(isinstance(m, HumanMessage) for m in messages),
        "cited_facts": [{"id": f.id, "text": f.text, "origin": f.origin} for f in facts],
        "used_bullet_ids": result.used_bullet_ids,
        "playbook_version": result.playbook_version,
        "writeback": result.writeback.model_dump(mode="json") if result.writeback else None,
    }


def _completion(answer: str, factflow: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": AGENT_MODEL_ID,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "factflow": factflow,
    }


def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": AGENT_MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


# -- the app ---------------------------------------------------------------------------------------


def create_app(settings: Settings, *, hub: AgentHub | None = None) -> FastAPI:
    """The FastAPI app; `hub` defaults to agents built from `settings` (loads the model now)."""
    hub = hub or AgentHub(settings)
    token = settings.agent_token.get_secret_value() if settings.agent_token else None
    model = hub.default.chat_model
    backend = str(getattr(model, "openai_api_base", None) or "in-process model")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        hub.close()

    app = FastAPI(title="factflow agent", lifespan=lifespan)
    app.state.hub = hub

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return ApiError(
            400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}", "invalid_body"
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(
            exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error"
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _translate(exc, backend).response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if token and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return ApiError(
                    401, "missing or wrong bearer token (FACTFLOW_AGENT_TOKEN)", "invalid_api_key"
                ).response()
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": AGENT_MODEL_ID,
            "backend": backend,
            "tool_calls": getattr(model, "tool_call_format", "json_action"),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": AGENT_MODEL_ID, "object": "model", "created": 0, "owned_by": "factflow"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(
        body: ChatRequest,
        x_factflow_thread: str | None = Header(None),
        x_factflow_namespace: str | None = Header(None),
    ) -> JSONResponse | StreamingResponse:
        if body.model != AGENT_MODEL_ID:
            raise ApiError(
                404, f"the model {body.model!r} does not exist: use {AGENT_MODEL_ID!r}", "model_not_found"
            )
        question = _question(body, settings)
        try:
            agent = await hub.run(lambda: hub.agent(x_factflow_namespace))
            thread, _ = await hub.run(lambda: _thread(body, x_factflow_thread, agent))
            lock = hub.lock(agent, thread)
            headers = {"X-Factflow-Thread": thread}
            if body.stream:  # the question is checked here, so a bad one is a 4xx, not an SSE error
                events = await hub.run(lambda: agent.stream(question, thread))
                return StreamingResponse(
                    _sse(hub, agent, thread, lock, events, backend),
                    media_type="text/event-stream",
                    headers=headers,
                )
            result = await hub.run(lambda: _guarded(agent, thread, lock, lambda: agent.ask(question, thread)))
            info = await hub.run(lambda: _factflow(agent, thread, result))
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error JSON
            return _translate(exc, backend).response()
        return JSONResponse(_completion(result.answer, info), headers=headers)

    @app.post("/v1/feedback")
    async def feedback(
        body: FeedbackRequest, x_factflow_namespace: str | None = Header(None)
    ) -> dict[str, Any]:
        try:
            agent = await hub.run(lambda: hub.agent(x_factflow_namespace))
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error JSON
            raise _translate(exc, backend) from None
        if not _THREAD_RE.match(body.thread_id):
            raise ApiError(400, f"invalid thread id {body.thread_id!r}", "invalid_thread")
        thread = body.thread_id
        if not await hub.run(lambda: _exists(agent, thread)):
            raise ApiError(
                404, f"unknown thread {body.thread_id!r}: ask a question in it first", "unknown_thread"
            )
        try:
            result = await hub.run(
                lambda: _guarded(
                    agent, thread, hub.lock(agent, thread), lambda: agent.feedback(thread, body.feedback)
                )
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error JSON
            raise _translate(exc, backend) from None
        return {**result.model_dump(mode="json"), "thread_id": body.thread_id}

    return app


async def _sse(
    hub: AgentHub,
    agent: Agent,
    thread: str,
    lock: threading.Lock,
    events: Iterator[StreamEvent],
    backend: str,
) -> AsyncIterator[str]:
    """SSE chunks of one streamed turn; the turn runs in a worker thread that owns the thread lock
    until it ends, even if the client goes away."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

    def produce() -> None:
        def forward() -> None:
            for event in events:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        try:
            _guarded(agent, thread, lock, forward)
        except BaseException as exc:  # noqa: BLE001 - handed to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    hub.pool.submit(produce)
    cid, text = f"chatcmpl-{uuid.uuid4().hex}", StreamText()
    yield _chunk(cid, {"role": "assistant", "content": ""})
    while (item := await queue.get()) is not None:
        if isinstance(item, BaseException):
            err = _translate(item, backend)
            error = {"message": err.message, "type": err.kind, "code": err.code}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        if item.kind == "token" and (piece := text.feed(item.text)):
            yield _chunk(cid, {"content": piece})
        elif item.kind == "result" and item.result is not None:
            result = item.result
            info = await hub.run(lambda r=result: _factflow(agent, thread, r))  # type: ignore[misc]
            yield _chunk(cid, {"content": text.finish(result.answer)}, "stop", factflow=info)
    yield "data: [DONE]\n\n"


# -- running it ------------------------------------------------------------------------------------


class AgentServerThread:
    """`with AgentServerThread(app) as s: s.base_url` - uvicorn in a thread (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        from factflow.serving.vllm_server import free_port

        self.host, self.port = host, port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> AgentServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the agent server did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_agent(
    settings: Settings, host: str, port: int, *, ready: Callable[[str], None] | None = None
) -> None:
    """`factflow serve --agent`: check the bind address, load the agent, serve until Ctrl-C."""
    import uvicorn

    check_bind(host, settings.agent_token.get_secret_value() if settings.agent_token else None)
    app = create_app(settings)
    model = app.state.hub.default.chat_model
    if ready is not None:
        counter = getattr(model, "token_counter", "model tokenizer")
        tools = getattr(model, "tool_call_format", "json_action")
        ready(
            f"factflow agent on http://{host}:{port}/v1 (model {AGENT_MODEL_ID!r}; tool calls: {tools}; "
            f"token counting: {counter})"
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")
