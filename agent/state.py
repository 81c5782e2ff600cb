"""The one typed state that flows through the agent graph.

Nodes return partial updates; the `Annotated` reducers say how an update merges into the state
(the langgraph prebuilt-agent habit). A thread's state outlives a turn in the checkpointer, so the
per-turn fields are reset by `retrieve` with `langgraph.types.Overwrite`, which bypasses the reducer.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

__all__ = ["AgentState", "FactRef", "union_ids", "merge_facts", "merge_timings"]


class FactRef(TypedDict):
    """A fact the model was shown this turn, as it appears in the prompt: `[id] text`."""

    id: str
    text: str
    score: float


def union_ids(left: list[str] | None, right: list[str] | None) -> list[str]:
    """Ordered union: ids found by a later tool round append to those retrieved up front."""
    out = list(left or [])
    seen = set(out)
    for item in right or []:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def merge_facts(left: list[FactRef] | None, right: list[FactRef] | None) -> list[FactRef]:
    """Ordered union by fact id; the first occurrence (the higher-ranked one) wins."""
    out = list(left or [])
    seen = {f["id"] for f in out}
    for fact in right or []:
        if fact["id"] not in seen:
            seen.add(fact["id"])
            out.append(fact)
    return out


def merge_timings(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    """Seconds per phase; a phase that runs twice in one turn (generate in a tool loop) adds up."""
    out = dict(left or {})
    for key, value in (right or {}).items():
        out[key] = out.get(key, 0.0) + value
    return out


class AgentState(TypedDict, total=False):
    """State of one thread. Conversation fields persist; the others describe the current turn."""

    # conversation (persists across turns of a thread)
    messages: Annotated[list[AnyMessage], add_messages]
    # input of the turn: a question, or feedback on the previous turn (the learn path)
    question: str
    feedback: str | None
    # retrieval of this turn
    facts: Annotated[list[FactRef], merge_facts]
    retrieved_ids: Annotated[list[str], union_ids]
    playbook_text: str
    bullet_ids: list[str]
    playbook_version: int
    # tool loop guard
    tool_rounds: int
    # outcome of this turn
    answer: str
    cited_fact_ids: list[str]
    citations_added: bool  # the system attached the citations, not the model
    used_bullet_ids: list[str]
    writeback: dict[str, Any] | None
    learn: dict[str, Any] | None
    timings: Annotated[dict[str, float], merge_timings]
