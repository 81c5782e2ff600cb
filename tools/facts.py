"""LangChain tools over the fact store: search, read, and propose (through the write-back gate).

Errors meant for the model (unknown id, empty query) come back as observations ending in a fix;
`search_facts` records every id it shows in `retrieved`, which is what attribution checks.
"""

from __future__ import annotations

import json

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.memory.store import FactStore

__all__ = ["SearchFactsArgs", "GetFactArgs", "ProposeFactArgs", "make_fact_tools"]


class SearchFactsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(description="What to look for, in plain words.", min_length=1, max_length=1000)
    k: int = Field(5, ge=1, le=20, description="How many facts to return.")


class GetFactArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fact_id: str = Field(description="An id returned by search_facts.", min_length=1, max_length=128)


class ProposeFactArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="One or more factual sentences to remember.", min_length=1, max_length=4000)
    cited_ids: list[str] = Field(description="Ids of the retrieved facts that support the text.")


def make_fact_tools(store: FactStore, namespace: str, retrieved: set[str]) -> list[BaseTool]:
    """[search_facts, get_fact, propose_fact] bound to one namespace and this turn's `retrieved`."""

    def search_facts(query: str, k: int = 5) -> str:
        try:
            hits = store.search(query, k=k, namespace=namespace)
        except UserError as exc:
            return f"error: {exc}"
        retrieved.update(h.fact.id for h in hits)
        if not hits:
            return "no facts found; try other words"
        return "\n".join(f"[{h.fact.id}] {h.fact.text} (origin={h.fact.origin})" for h in hits)

    def get_fact(fact_id: str) -> str:
        try:
            fact = store.get(fact_id, namespace=namespace)
        except UserError as exc:
            return f"error: {exc}"
        if fact is None:
            return f"error: no fact {fact_id!r}; use an id returned by search_facts"
        retrieved.add(fact.id)
        state = "valid" if fact.is_valid() else f"invalid since {fact.valid_to}"
        return json.dumps(
            {
                "id": fact.id,
                "text": fact.text,
                "origin": fact.origin,
                "source_ids": fact.source_ids,
                "state": state,
            }
        )

    def propose_fact(text: str, cited_ids: list[str]) -> str:
        try:
            d = store.propose(text, cited_ids, sorted(retrieved), namespace=namespace)
        except UserError as exc:
            return f"error: {exc}"
        if d.accepted:
            rejected = sum(not c.accepted for c in d.claims)
            return f"stored as {', '.join(d.fact_ids)}" + (
                f"; {rejected} claim(s) rejected" if rejected else ""
            )
        return "not stored: " + " | ".join(d.reasons)

    return [
        StructuredTool.from_function(
            func=search_facts,
            name="search_facts",
            args_schema=SearchFactsArgs,
            description="Search stored facts (hybrid dense + keyword). Returns lines '[id] text'.",
        ),
        StructuredTool.from_function(
            func=get_fact,
            name="get_fact",
            args_schema=GetFactArgs,
            description="Read one stored fact by id, with its provenance.",
        ),
        StructuredTool.from_function(
            func=propose_fact,
            name="propose_fact",
            args_schema=ProposeFactArgs,
            description="Propose new facts for memory, citing the retrieved fact ids that support them. "
            "Only verified, novel claims are stored.",
        ),
    ]
