"""`factflow mcp`: factflow's memory and agent as an MCP server (official `mcp` SDK).

    factflow mcp                      # stdio: what desktop assistants and IDE agents launch
    factflow mcp --port 8931          # streamable HTTP on http://127.0.0.1:8931/mcp

One server serves one namespace (`--namespace`, else FACTFLOW_NAMESPACE): every tool and
resource reads and writes that tenant only. The store and playbook open on the first call and
the chat model loads only when `ask` is called, so memory-only clients never pay for a model.

Errors a caller can fix (unknown id, empty text, bad tag) come back as tool errors whose text is
the one-sentence `UserError` message; arguments that do not match a tool's schema are rejected
by the SDK with the field that is wrong.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from factflow import __version__
from factflow.errors import UserError
from factflow.memory.facts import Fact
from factflow.settings import Settings, get_settings

__all__ = ["FactflowMemory", "build_server", "run_server"]

_F = TypeVar("_F", bound=Callable[..., Any])

_INSTRUCTIONS = (
    "factflow keeps verified facts (with ids and provenance) and a playbook of strategies. "
    "search_facts before answering questions about things you were taught; cite fact ids; "
    "teach_fact stores what a person states as true; propose_fact runs a claim through the "
    "verification gate (it must cite ids from search_facts)."
)


def _fact_json(fact: Fact) -> dict[str, Any]:
    return fact.model_dump(mode="json", exclude={"verification"})


class FactflowMemory:
    """The state behind one server: one namespace's store, playbook and (lazily) agent."""

    def __init__(self, settings: Settings, namespace: str) -> None:
        from factflow.memory.store import validate_namespace

        self.settings = settings
        self.namespace = validate_namespace(namespace)
        self._store: Any = None
        self._playbook: Any = None
        self._agent: Any = None
        # Tools run in worker threads; one turn or write at a time keeps the store's and the
        # playbook's single handles simple (calls are short next to a model turn).
        self._lock = threading.RLock()

    @property
    def store(self) -> Any:
        with self._lock:
            if self._store is None:
                from factflow.memory.store import FactStore

                self._store = FactStore.open(self.settings)
            return self._store

    @property
    def playbook(self) -> Any:
        with self._lock:
            if self._playbook is None:
                from factflow.memory.playbook import Playbook

                self._playbook = Playbook.open(settings=self.settings, namespace=self.namespace)
            return self._playbook

    @property
    def agent(self) -> Any:
        with self._lock:
            if self._agent is None:
                from factflow.agent.api import Agent

                self._agent = Agent(
                    self.settings, store=self.store, playbook=self.playbook, namespace=self.namespace
                )
            return self._agent

    def close(self) -> None:
        with self._lock:
            if self._agent is not None:
                self._agent.close()  # closes the shared store too
            elif self._store is not None:
                self._store.close()
            if self._playbook is not None:
                self._playbook.close()
            self._agent = self._store = self._playbook = None

    # -- operations (one per tool; plain data in and out) ---------------------------------

    def search_facts(self, query: str, k: int) -> list[dict[str, Any]]:
        with self._lock:
            hits = self.store.search(query, k=k, namespace=self.namespace)
        return [{**_fact_json(h.fact), "score": round(float(h.score), 6)} for h in hits]

    def get_fact(self, fact_id: str) -> dict[str, Any]:
        with self._lock:
            fact = self.store.get(fact_id, namespace=self.namespace)
        if fact is None:
            raise UserError(
                f"no fact {fact_id!r} in namespace {self.namespace!r}: use an id returned by search_facts"
            )
        return _fact_json(fact)

    def teach_fact(self, text: str, source_ids: list[str]) -> dict[str, Any]:
        if not text.strip():
            raise UserError("the fact text is empty: pass one sentence stating the fact")
        with self._lock:
            fact = self.store.teach(text, namespace=self.namespace, source_ids=tuple(source_ids))
        return _fact_json(fact)

    def propose_fact(self, text: str, cited_ids: list[str]) -> dict[str, Any]:
        with self._lock:
            # The cited facts are the ones the caller retrieved: the gate checks attribution,
            # support by those sources, novelty and contradiction before anything is written.
            decision = self.store.propose(text, list(cited_ids), list(cited_ids), namespace=self.namespace)
        result: dict[str, Any] = decision.model_dump(mode="json")
        return result

    def invalidate_fact(self, fact_id: str, reason: str) -> dict[str, Any]:
        with self._lock:
            fact = self.store.invalidate(fact_id, namespace=self.namespace, reason=reason)
        return _fact_json(fact)

    def playbook_show(self, query: str, budget_tokens: int | None) -> dict[str, Any]:
        with self._lock:
            rendered = self.playbook.render(query, budget_tokens=budget_tokens)
            version = int(self.playbook.version)
        return {"version": version, "text": rendered.text, "bullet_ids": list(rendered.bullet_ids)}

    def playbook_feedback(self, bullet_id: str, tag: str, count: int) -> dict[str, Any]:
        from factflow.memory.bullets import Delta, TagOp

        with self._lock:
            if bullet_id not in self.playbook.state().bullets:
                raise UserError(
                    f"no bullet {bullet_id!r} in the playbook of namespace {self.namespace!r}: "
                    "use an id shown by playbook_show"
                )
            result = self.playbook.apply(
                Delta(ops=[TagOp(id=bullet_id, tag=tag, count=count)]),  # type: ignore[arg-type]
                author="mcp",
                reason=f"{tag} feedback over MCP",
            )
        out: dict[str, Any] = result.model_dump(mode="json", include={"version", "applied", "rejected"})
        return out

    def ask(self, question: str, thread_id: str | None) -> dict[str, Any]:
        with self._lock:
            result = self.agent.ask(question, thread_id=thread_id)
        out: dict[str, Any] = result.model_dump(mode="json", exclude={"timings"})
        return out


def _tool_errors(fn: _F) -> _F:
    """A `UserError` reaches the client as a tool error carrying its message (the SDK would
    otherwise hide any unexpected exception's text behind "Error executing tool")."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise ToolError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def build_server(
    settings: Settings | None = None, *, namespace: str | None = None
) -> tuple[MCPServer, FactflowMemory]:
    """An `MCPServer` over one namespace, and the memory it holds (close it when done)."""
    settings = settings or get_settings()
    memory = FactflowMemory(settings, namespace or settings.namespace)
    server: MCPServer = MCPServer(
        "factflow",
        title=f"factflow ({memory.namespace})",
        version=__version__,
        instructions=_INSTRUCTIONS,
        log_level="WARNING",
    )
    readonly = ToolAnnotations(read_only_hint=True)

    @server.tool(annotations=readonly)
    @_tool_errors
    def search_facts(
        query: str = Field(description="Words to search for (hybrid dense + BM25 search)."),
        k: int = Field(5, ge=1, le=100, description="How many facts to return."),
    ) -> list[dict[str, Any]]:
        """Search the valid facts of this server's namespace; returns facts with ids and scores."""
        return memory.search_facts(query, k)

    @server.tool(annotations=readonly)
    @_tool_errors
    def get_fact(fact_id: str = Field(description="A fact id, e.g. f-0123abcd...")) -> dict[str, Any]:
        """One fact with its provenance (origin, sources, validity), valid or not."""
        return memory.get_fact(fact_id)

    @server.tool()
    @_tool_errors
    def teach_fact(
        text: str = Field(description="One sentence a person states as true."),
        source_ids: list[str] = Field(default_factory=list, description="Ids of facts it derives from."),
    ) -> dict[str, Any]:
        """Store a fact as given (origin human); teaching the same text again returns the stored fact."""
        return memory.teach_fact(text, source_ids)

    @server.tool()
    @_tool_errors
    def propose_fact(
        text: str = Field(description="The claim(s) to store, e.g. an answer that cites facts [f-...]."),
        cited_ids: list[str] = Field(default_factory=list, description="Fact ids the claim relies on."),
    ) -> dict[str, Any]:
        """Run a model-written claim through the write-back gate; stored only if it passes."""
        return memory.propose_fact(text, cited_ids)

    @server.tool()
    @_tool_errors
    def invalidate_fact(
        fact_id: str = Field(description="The fact to retire."),
        reason: str = Field("", description="Why it no longer holds (kept in the audit log)."),
    ) -> dict[str, Any]:
        """End a fact's validity: kept for history, no longer retrieved."""
        return memory.invalidate_fact(fact_id, reason)

    @server.tool(annotations=readonly)
    @_tool_errors
    def playbook_show(
        query: str = Field("", description="Rank bullets for this task (empty: the whole playbook)."),
        budget_tokens: int | None = Field(None, ge=1, description="Token budget for the rendered text."),
    ) -> dict[str, Any]:
        """The playbook rendered as the agent sees it: bullets `[id] text` and the version."""
        return memory.playbook_show(query, budget_tokens)

    @server.tool()
    @_tool_errors
    def playbook_feedback(
        bullet_id: str = Field(description="A bullet id shown by playbook_show."),
        tag: Literal["helpful", "harmful", "neutral"] = Field(description="Did the bullet help?"),
        count: int = Field(1, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Count a bullet helpful or harmful (ACE counters); harmful bullets are pruned in time."""
        return memory.playbook_feedback(bullet_id, tag, count)

    @server.tool()
    @_tool_errors
    def ask(
        question: str = Field(description="The question for the factflow agent."),
        thread_id: str | None = Field(None, description="Continue this thread (from an earlier ask)."),
    ) -> dict[str, Any]:
        """One agent turn: retrieve facts and playbook, answer with citations, gate the write-back."""
        return memory.ask(question, thread_id)

    @server.resource(
        "factflow://facts/{fact_id}", name="fact", mime_type="application/json", description="One fact."
    )
    def fact_resource(fact_id: str) -> dict[str, Any]:
        try:
            return memory.get_fact(fact_id)
        except UserError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource(
        "factflow://playbook", name="playbook", mime_type="text/markdown", description="The whole playbook."
    )
    def playbook_resource() -> str:
        with memory._lock:
            text: str = memory.playbook.export_markdown()
        return text

    return server, memory


def run_server(settings: Settings, *, namespace: str | None = None, port: int | None = None) -> None:
    """Serve until the client disconnects (stdio) or Ctrl-C (HTTP on loopback)."""
    server, memory = build_server(settings, namespace=namespace)
    try:
        if port is None:
            server.run("stdio")
        else:
            server.run("streamable-http", host="127.0.0.1", port=port)
    finally:
        memory.close()
