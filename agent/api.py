"""`factflow.Agent`: the Python API apps embed.

    from factflow import Agent
    agent = Agent()                                  # embedded default: SmolLM2 + Chroma under HOME
    agent.teach("The Zorbian capital is Quillmar.")
    result = agent.ask("What city is Zorbia's capital?")
    result.answer, result.cited_fact_ids, result.writeback
    agent.feedback(result.thread_id, "correct")      # reflect -> curate -> new playbook version

Threads are checkpointed in HOME/threads.sqlite3 (async SQLite saver; Postgres with
FACTFLOW_CHECKPOINT_URL; or any LangGraph checkpointer passed in), so a thread resumes after a
restart. Each namespace has its own playbook and its own threads. The compiled graph is
`agent.graph` for apps that compose it; `invoke` and `await ainvoke` both work on it.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field

from factflow.agent.graph import CONTROL_TAG, build_graph
from factflow.errors import UserError
from factflow.memory.facts import Fact, WritebackDecision
from factflow.settings import Settings, get_settings

__all__ = [
    "Agent",
    "AskResult",
    "StreamEvent",
    "FeedbackResult",
    "ThreadInfo",
    "TurnRecord",
    "AnswerExtractor",
    "count_tokens",
]

_RESERVED_PROMPT_TOKENS = 512  # system instructions + retrieved facts, on top of the playbook budget


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskResult(_Strict):
    """Outcome of one turn."""

    answer: str
    cited_fact_ids: list[str] = Field(default_factory=list, description="Validated against retrieved ids.")
    used_bullet_ids: list[str] = Field(default_factory=list)
    writeback: WritebackDecision | None = Field(None, description="The write-back gate's decision.")
    thread_id: str
    retrieved_fact_ids: list[str] = Field(default_factory=list)
    playbook_version: int = 0
    tool_rounds: int = 0
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per graph phase.")
    writeback_pending: list[str] = Field(
        default_factory=list,
        description="Claims waiting for `confirm_writeback` (setting fact_writeback_approval).",
    )


class StreamEvent(_Strict):
    """`token`: answer text as it is generated; `node`: a graph node finished; `result`: the end."""

    kind: Literal["token", "node", "result"]
    node: str | None = None
    text: str = ""
    result: AskResult | None = None


class FeedbackResult(_Strict):
    thread_id: str
    version_before: int
    version: int
    learn: dict[str, Any] | None = None


class ThreadInfo(_Strict):
    thread_id: str
    turns: int
    last_question: str


class TurnRecord(_Strict):
    """What `/why` shows: the sources and bullets behind the last answer of a thread."""

    thread_id: str
    question: str
    answer: str
    cited_fact_ids: list[str]
    used_bullet_ids: list[str]
    facts: list[dict[str, Any]]
    playbook_text: str
    playbook_version: int
    tool_calls: list[dict[str, Any]]
    writeback: WritebackDecision | None


def count_tokens(chat_model: Any, text: str) -> int:
    """Tokens of `text` by the model's own tokenizer (both engines expose `count_tokens`).

    Models without one (fakes, foreign chat models) get an estimate of ~4 characters per token.
    """
    counter = getattr(chat_model, "count_tokens", None)
    if callable(counter):
        try:
            return int(counter(text))
        except Exception:  # e.g. the server is unreachable: the estimate still catches huge inputs
            pass
    return len(text) // 4 + 1


class AnswerExtractor:
    """Answer text out of a token stream that may be a JSON action `{"action":..., "answer": "..."}`.

    The constrained action format streams JSON; people should see only the answer string, decoded
    as it arrives. Plain-text streams (no tools bound) pass through unchanged.
    """

    _ANSWER_KEY = re.compile(r'"answer"\s*:\s*"')

    def __init__(self) -> None:
        self.buf = ""
        self.mode: Literal["json", "text"] | None = None
        self.pos = 0
        self.started = False
        self.done = False

    def feed(self, piece: str) -> str:
        self.buf += piece
        if self.mode is None:
            stripped = self.buf.lstrip()
            if not stripped:
                return ""
            self.mode = "json" if stripped[0] == "{" else "text"
        if self.mode == "text":
            text = self.buf[self.pos :]
            self.pos = len(self.buf)
            return text
        if not self.started:
            match = self._ANSWER_KEY.search(self.buf)
            if match is None:
                return ""
            self.started, self.pos = True, match.end()
        out: list[str] = []
        i, buf = self.pos, self.buf
        while i < len(buf) and not self.done:
            c = buf[i]
            if c == '"':
                self.done = True
                break
            if c == "\\":
                width = 6 if buf[i + 1 : i + 2] == "u" else 2
                if i + width > len(buf):
                    break  # escape split across tokens: wait for the rest
                with contextlib.suppress(json.JSONDecodeError):  # a malformed escape is dropped
                    out.append(json.loads(f'"{buf[i : i + width]}"'))
                i += width
            else:
                out.append(c)
                i += 1
        self.pos = i
        return "".join(out)


class _TokenFilter:
    """Turns LangGraph `messages`/`updates` stream items into StreamEvents: answer text only
    (tool decisions and arguments are tagged CONTROL_TAG and never shown)."""

    def __init__(self) -> None:
        self.extractor = AnswerExtractor()
        self.run_id: str | None = None

    def events(self, mode: str, payload: Any) -> list[StreamEvent]:
        if mode == "updates":
            return [StreamEvent(kind="node", node=str(node)) for node in payload]
        chunk, meta = payload
        if meta.get("langgraph_node") != "generate" or not isinstance(chunk, AIMessageChunk):
            return []
        if CONTROL_TAG in (meta.get("tags") or []):
            return []
        if chunk.id != self.run_id:  # a new generate call (after a tool round): new stream
            self.extractor, self.run_id = AnswerExtractor(), chunk.id
        text = self.extractor.feed(chunk.content if isinstance(chunk.content, str) else "")
        return [StreamEvent(kind="token", node="generate", text=text)] if text else []


class Agent:
    """The factflow agent: one chat model, one fact store, one playbook, persistent threads."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        chat_model: Any = None,
        store: Any = None,
        playbook: Any = None,
        tools: Sequence[BaseTool] = (),
        persist: bool = True,
        namespace: str | None = None,
        tool_choice: str | None = None,
        checkpointer: Any = None,
    ) -> None:
        """Every argument is optional: `Agent()` runs the embedded default from the settings.

        `chat_model`/`store`/`playbook` replace the configured ones; `tools` are added to the
        built-in ones; `persist=False` keeps threads in memory only; `tool_choice` ("any" or a
        tool name) makes the first step of every turn a tool call; `checkpointer` is any
        LangGraph checkpointer (the caller closes it), else `open_checkpointer(settings)`.
        """
        self.settings = settings or get_settings()
        self.namespace = namespace or self.settings.namespace
        self._owned: list[Any] = []  # what this Agent opened and so closes
        if chat_model is None:
            from factflow.serving.engines import load_chat_model

            chat_model = load_chat_model(self.settings)
        if store is None:
            from factflow.memory.store import FactStore

            store = FactStore.open(self.settings)
        if playbook is None:
            from factflow.memory.playbook import Playbook

            playbook = Playbook.open(settings=self.settings, namespace=self.namespace)
            self._owned.append(playbook)
        self.chat_model = chat_model
        self.store = store
        self.playbook = playbook
        if checkpointer is None and persist:
            from factflow.agent.checkpoint import open_checkpointer

            checkpointer = open_checkpointer(self.settings)
            self._owned.append(checkpointer)
        elif checkpointer is None:
            from langgraph.checkpoint.memory import InMemorySaver

            checkpointer = InMemorySaver()
        self.checkpointer = checkpointer
        self.graph = build_graph(
            chat_model,
            store,
            playbook,
            tools=tools,
            checkpointer=checkpointer,
            settings=self.settings,
            namespace=self.namespace,
            tool_choice=tool_choice,
        )
        self._lock = threading.Lock()

    # -- turns -------------------------------------------------------------------------------

    def _check_question(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise UserError("the question is empty; type a question (or /help in the REPL)")
        limit = max(
            64,
            self.settings.context_window
            - self.settings.max_new_tokens
            - self.settings.playbook_token_budget
            - _RESERVED_PROMPT_TOKENS,
        )
        n = count_tokens(self.chat_model, question)
        if n > limit:
            raise UserError(
                f"the question is too long ({n} tokens, at most {limit} fit the context window of "
                f"{self.settings.context_window}); shorten it or raise FACTFLOW_CONTEXT_WINDOW"
            )
        return question

    def _config(self, thread_id: str) -> dict[str, Any]:
        # Namespaces share one checkpointer (a Postgres one may serve many replicas), so a thread
        # is stored under "namespace/id"; namespaces cannot contain "/", so keys never collide.
        return {"configurable": {"thread_id": f"{self.namespace}/{thread_id}"}}

    def _result(self, thread_id: str, values: dict[str, Any]) -> AskResult:
        wb = values.get("writeback")
        return AskResult(
            answer=values.get("answer", ""),
            cited_fact_ids=list(values.get("cited_fact_ids", [])),
            used_bullet_ids=list(values.get("used_bullet_ids", [])),
            writeback=WritebackDecision.model_validate(wb) if wb else None,
            thread_id=thread_id,
            retrieved_fact_ids=list(values.get("retrieved_ids", [])),
            playbook_version=int(values.get("playbook_version", 0)),
            tool_rounds=int(values.get("tool_rounds", 0)),
            timings=dict(values.get("timings", {})),
            writeback_pending=self._pending(thread_id),
        )

    def _pending(self, thread_id: str) -> list[str]:
        waiting = self.graph.get_state(self._config(thread_id)).interrupts
        return [c for i in waiting if isinstance(i.value, dict) for c in i.value.get("claims", [])]

    def confirm_writeback(self, thread_id: str, approve: bool) -> AskResult:
        """Approve or decline the write-back a turn paused on (setting fact_writeback_approval)."""
        from langgraph.types import Command

        if not self._pending(thread_id):
            raise UserError(f"thread {thread_id!r} has no write-back waiting for approval")
        values = self.graph.invoke(Command(resume=bool(approve)), self._config(thread_id))
        return self._result(thread_id, values)

    def ask(self, question: str, thread_id: str | None = None) -> AskResult:
        """Answer one question in a thread (a new thread when `thread_id` is None)."""
        question = self._check_question(question)
        thread_id = thread_id or uuid.uuid4().hex[:12]
        values = self.graph.invoke({"question": question, "feedback": None}, self._config(thread_id))
        return self._result(thread_id, values)

    def stream(self, question: str, thread_id: str | None = None) -> Iterator[StreamEvent]:
        """Yield answer tokens and node events as they happen, then one `result` event.

        Bad input raises here, before the first event (not on the first `next`).
        """
        question = self._check_question(question)
        return self._stream(question, thread_id or uuid.uuid4().hex[:12])

    def _stream(self, question: str, thread_id: str) -> Iterator[StreamEvent]:
        cfg = self._config(thread_id)
        tokens = _TokenFilter()
        for mode, payload in self.graph.stream(
            {"question": question, "feedback": None}, cfg, stream_mode=["messages", "updates"]
        ):
            yield from tokens.events(mode, payload)
        values = self.graph.get_state(cfg).values
        yield StreamEvent(kind="result", result=self._result(thread_id, values))

    async def aask(self, question: str, thread_id: str | None = None) -> AskResult:
        """`ask` for asyncio apps: `graph.ainvoke` on the async checkpointer (the engines'
        synchronous calls run in LangGraph's executor threads, so the loop stays free)."""
        question = self._check_question(question)
        thread_id = thread_id or uuid.uuid4().hex[:12]
        values = await self.graph.ainvoke({"question": question, "feedback": None}, self._config(thread_id))
        return self._result(thread_id, values)

    async def astream(self, question: str, thread_id: str | None = None) -> AsyncIterator[StreamEvent]:
        """`stream` for asyncio apps, on `graph.astream`."""
        question = self._check_question(question)
        thread_id = thread_id or uuid.uuid4().hex[:12]
        cfg = self._config(thread_id)
        tokens = _TokenFilter()
        async for mode, payload in self.graph.astream(
            {"question": question, "feedback": None}, cfg, stream_mode=["messages", "updates"]
        ):
            for event in tokens.events(mode, payload):
                yield event
        values = (await self.graph.aget_state(cfg)).values
        yield StreamEvent(kind="result", result=self._result(thread_id, values))

    # -- learning ----------------------------------------------------------------------------

    def feedback(self, thread_id: str, label_or_result: Any) -> FeedbackResult:
        """Feedback on the thread's last answer (a label like "correct", or an execution result).

        Runs the learn path: reflect -> curate -> a new playbook version when the curator finds
        something worth adding.
        """
        if isinstance(label_or_result, BaseModel):
            text = label_or_result.model_dump_json()
        elif isinstance(label_or_result, dict | list):
            text = json.dumps(label_or_result, default=str)
        else:
            text = str(label_or_result).strip()
        if not text:
            raise UserError("the feedback is empty; give a label such as 'correct' or 'wrong: <why>'")
        cfg = self._config(thread_id)
        if not self.graph.get_state(cfg).values.get("question"):
            raise UserError(f"thread {thread_id!r} has no answered question; ask something first")
        before = int(self.playbook.version)
        values = self.graph.invoke({"feedback": text}, cfg)
        return FeedbackResult(
            thread_id=thread_id,
            version_before=before,
            version=int(self.playbook.version),
            learn=values.get("learn"),
        )

    def teach(self, fact: str, *, source_ids: Sequence[str] = ()) -> Fact:
        """Store a human-taught fact in the agent's namespace; returns it with its id."""
        fact = fact.strip()
        if not fact:
            raise UserError(
                "the fact is empty; write it as one sentence, e.g. /teach Zorbia's capital is Quillmar"
            )
        result: Fact = self.store.teach(fact, namespace=self.namespace, source_ids=tuple(source_ids))
        return result

    def forget(self, fact_id: str, *, delete: bool = False, reason: str = "") -> list[str]:
        """Stop using a fact of the agent's namespace, and the model facts derived from it.

        Default: invalidate (kept for history, never retrieved again). `delete=True` erases them
        and scrubs their text from the audit log. Returns the affected fact ids.
        """
        if delete:
            gone: list[str] = self.store.delete(fact_id, namespace=self.namespace, reason=reason)
            return gone
        derived = [f.id for f in self.store.derived_facts(fact_id, namespace=self.namespace)]
        self.store.invalidate(fact_id, namespace=self.namespace, reason=reason or "forgotten")
        return [fact_id, *derived]

    # -- threads -----------------------------------------------------------------------------

    def threads(self) -> list[ThreadInfo]:
        """Threads with checkpoints, most recently used first."""
        prefix = f"{self.namespace}/"
        last: dict[str, str] = {}  # thread id -> newest checkpoint id (uuid6: sorts by time)
        for tup in self.checkpointer.list(None):
            conf = tup.config["configurable"]
            key = str(conf["thread_id"])
            if key.startswith(prefix):
                thread_id = key[len(prefix) :]
                last[thread_id] = max(last.get(thread_id, ""), str(conf.get("checkpoint_id", "")))
        ids = sorted(last, key=lambda t: last[t], reverse=True)
        out = []
        for thread_id in ids:
            messages = self.graph.get_state(self._config(thread_id)).values.get("messages", [])
            questions = [str(m.content) for m in messages if isinstance(m, HumanMessage)]
            out.append(
                ThreadInfo(thread_id=thread_id, turns=len(questions), last_question=(questions or [""])[-1])
            )
        return out

    def delete_thread(self, thread_id: str) -> None:
        """Forget a thread's checkpoints (facts and playbook stay)."""
        self.checkpointer.delete_thread(self._config(thread_id)["configurable"]["thread_id"])

    def why(self, thread_id: str) -> TurnRecord:
        """Sources and bullets behind the thread's last answer."""
        values = self.graph.get_state(self._config(thread_id)).values
        if not values.get("question"):
            raise UserError(f"thread {thread_id!r} has no answered question yet")
        messages: list[BaseMessage] = values.get("messages", [])
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
        calls = [
            {"name": c["name"], "args": c["args"]}
            for m in messages[last_human:]
            if isinstance(m, AIMessage)
            for c in m.tool_calls
        ]
        wb = values.get("writeback")
        return TurnRecord(
            thread_id=thread_id,
            question=values.get("question", ""),
            answer=values.get("answer", ""),
            cited_fact_ids=list(values.get("cited_fact_ids", [])),
            used_bullet_ids=list(values.get("used_bullet_ids", [])),
            facts=[dict(f) for f in values.get("facts", [])],
            playbook_text=values.get("playbook_text", ""),
            playbook_version=int(values.get("playbook_version", 0)),
            tool_calls=calls,
            writeback=WritebackDecision.model_validate(wb) if wb else None,
        )

    def export(self, thread_id: str) -> dict[str, Any]:
        """The thread as JSON-ready data: messages (role, content, tool calls) and the last turn."""
        values = self.graph.get_state(self._config(thread_id)).values
        roles: dict[type, str] = {HumanMessage: "user", AIMessage: "assistant", ToolMessage: "tool"}
        messages = [
            {
                "role": roles.get(type(m), m.type),
                "content": m.content,
                **(
                    {"tool_calls": [{"name": c["name"], "args": c["args"]} for c in m.tool_calls]}
                    if isinstance(m, AIMessage) and m.tool_calls
                    else {}
                ),
            }
            for m in values.get("messages", [])
        ]
        return {
            "thread_id": thread_id,
            "messages": messages,
            "last_turn": self.why(thread_id).model_dump(mode="json") if values.get("question") else None,
        }

    def close(self) -> None:
        """Release the thread store, the playbook this Agent opened, and the store."""
        while self._owned:
            self._owned.pop().close()
        closer = getattr(self.store, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
