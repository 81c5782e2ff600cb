"""The graph's learn node hands the ACE loop what the answered turn holds: the Generator's
reasoning (server reasoning text and the tool calls it chose) and the tool trajectory with
arguments. Pure logic with the scripted model; the real loop runs in test_playbook_e2e."""

from __future__ import annotations

from typing import Any

from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from factflow.agent.graph import build_graph
from factflow.settings import Settings


class RecordingPlaybook(FakePlaybook):
    """Keeps the keyword arguments `learn` was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict[str, Any]] = []

    def learn(self, question: str, answer: str, feedback: str, chat_model: Any, **kw: Any) -> dict[str, Any]:
        self.kwargs.append(kw)
        return super().learn(question, answer, feedback, chat_model, **kw)


def test_learn_passes_reasoning_and_the_tool_trajectory() -> None:
    call = AIMessage(
        content="",
        additional_kwargs={"reasoning_content": "The store should name the capital."},
        tool_calls=[
            {"name": "search_facts", "args": {"query": "zorbia capital"}, "id": "c0", "type": "tool_call"}
        ],
    )
    model = FakeToolCallingModel(script=[call, AIMessage(content="Paris [f-paris].")])
    playbook = RecordingPlaybook()
    graph = build_graph(
        model,
        FakeStore(FACTS),
        playbook,
        checkpointer=InMemorySaver(),
        settings=Settings(),
        tool_choice="search_facts",  # the first round calls the tool whatever the decide step says
    )
    cfg = {"configurable": {"thread_id": "t"}}
    graph.invoke({"question": "What is the capital of Zorbia?"}, cfg)
    graph.invoke({"feedback": "correct"}, cfg)

    (kw,) = playbook.kwargs
    reasoning = kw["reasoning"].splitlines()
    assert reasoning == [
        "The store should name the capital.",
        'called search_facts({"query": "zorbia capital"})',
    ]
    # the trajectory shows each call with its arguments and what it returned
    assert kw["trajectory"].startswith('search_facts({"query": "zorbia capital"}) -> ')
    assert "f-paris" in kw["trajectory"]


def test_a_turn_without_tools_or_reasoning_passes_none() -> None:
    model = FakeToolCallingModel(script=[AIMessage(content="Paris [f-paris].")])
    playbook = RecordingPlaybook()
    graph = build_graph(model, FakeStore(FACTS), playbook, checkpointer=InMemorySaver(), settings=Settings())
    cfg = {"configurable": {"thread_id": "t"}}
    graph.invoke({"question": "capital of Zorbia?"}, cfg)
    graph.invoke({"feedback": "wrong: it is Lyon"}, cfg)
    (kw,) = playbook.kwargs
    assert kw["reasoning"] == "" and kw["trajectory"] == ""
