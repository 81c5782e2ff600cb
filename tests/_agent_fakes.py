"""Scripted stand-ins for graph-logic tests: a tool-calling chat model, a store, a playbook.

Pure-logic fakes only; the real model, store and playbook are exercised in test_agent_e2e.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel

from factflow.memory.facts import Fact, ScoredFact, WritebackDecision

__all__ = ["FakeToolCallingModel", "FakeStore", "FakePlaybook", "FACTS"]


class FakeToolCallingModel(BaseChatModel):
    """Replays scripted AIMessages; records the prompts it saw and the tools bound to it."""

    script: list[AIMessage]
    citations: dict[str, Any] = {}
    seen: list[list[BaseMessage]] = []
    bound_tools: list[str] = []
    structured_calls: int = 0
    decisions: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "fake-tool-calling"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        step = len(self.seen) - 1
        message = self.script[min(step, len(self.script) - 1)]
        return ChatResult(generations=[ChatGeneration(message=message.model_copy())])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable:  # type: ignore[override]
        self.bound_tools.extend(t.name for t in tools)
        return self

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Runnable:  # type: ignore[override]
        def pick(_: Any) -> BaseModel:
            if "action" in schema.model_fields:  # decide step: follow what the script does next
                upcoming = self.script[min(len(self.seen), len(self.script) - 1)]
                self.decisions.append(upcoming.tool_calls[0]["name"] if upcoming.tool_calls else "answer")
                return schema.model_validate({"action": self.decisions[-1]})
            self.structured_calls += 1
            return schema.model_validate(self.citations)

        return RunnableLambda(pick)


class FakeStore:
    def __init__(self, facts: dict[str, str]) -> None:
        self.facts = {i: Fact(id=i, text=t, namespace="default", origin="human") for i, t in facts.items()}
        self.proposed: list[tuple[str, list[str], list[str]]] = []

    def search(
        self, query: str, *, k: int = 5, namespace: str | None = None, where: Any = None
    ) -> list[ScoredFact]:
        words = set(query.lower().split())
        hits = [f for f in self.facts.values() if words & set(f.text.lower().split())]
        return [ScoredFact(fact=f, score=1.0 / (i + 1)) for i, f in enumerate(hits[:k])]

    def get(self, fact_id: str, namespace: str | None = None) -> Fact | None:
        return self.facts.get(fact_id)

    def propose(
        self, answer: str, cited_ids: list[str], retrieved_ids: list[str], **kw: Any
    ) -> WritebackDecision:
        self.proposed.append((answer, cited_ids, retrieved_ids))
        return WritebackDecision(accepted=False, reasons=["fake gate"])


class _Rendered(BaseModel):
    text: str
    bullet_ids: list[str]
    omitted: int = 0
    tokens: int = 0


class FakePlaybook:
    version = 1

    def __init__(self) -> None:
        self.learned: list[tuple[str, str, str]] = []

    def render(self, query: str = "", budget_tokens: int | None = None) -> _Rendered:
        return _Rendered(
            text="[strat-00001] Quote the fact that answers the question.", bullet_ids=["strat-00001"]
        )

    def learn(self, question: str, answer: str, feedback: str, chat_model: Any, **kw: Any) -> dict[str, Any]:
        self.learned.append((question, answer, feedback))
        self.version += 1
        return {"version": self.version}


FACTS = {"f-paris": "The capital of Zorbia is Paris.", "f-moon": "The moon of Zorbia is Blue."}
