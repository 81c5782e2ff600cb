"""Tenants and async: one playbook and one thread list per namespace; `await graph.ainvoke` works.

Real playbook files and real checkpointers (async SQLite saver, InMemorySaver); the chat model and
the fact store are the scripted fakes (the real ones run in test_agent_e2e.py and test_mcp.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from factflow.agent.api import Agent
from factflow.memory.bullets import AddOp, Delta
from factflow.memory.playbook import Playbook, playbook_path
from factflow.settings import Settings

LOOK_ALIKE = ("john_doe", "john-doe")  # same slug, different tenants


def _model(*answers: str) -> FakeToolCallingModel:
    return FakeToolCallingModel(script=[AIMessage(content=a) for a in answers])


def test_look_alike_namespaces_have_separate_playbooks(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, dedup_mode="off")
    paths = {ns: playbook_path(settings, ns) for ns in LOOK_ALIKE}
    assert (
        len(set(paths.values())) == 2 and playbook_path(settings, "default") == tmp_path / "playbook.sqlite3"
    )
    with Playbook.open(settings=settings, namespace="john_doe") as pb:
        pb.apply(Delta(ops=[AddOp(section="strategies", content="Answer John in French.")]))
    # the Agent opens its namespace's playbook
    agents = [
        Agent(settings, chat_model=_model("ok"), store=FakeStore(FACTS), namespace=ns) for ns in LOOK_ALIKE
    ]
    try:
        john, other = agents
        assert john.playbook.path == paths["john_doe"] and other.playbook.path == paths["john-doe"]
        assert "French" in john.playbook.render("").text
        assert john.playbook.version == 1 and other.playbook.version == 0
        assert "French" not in other.playbook.render("").text
    finally:
        for agent in agents:
            agent.close()


def _agent(home: Path, namespace: str, checkpointer: object = None, *answers: str) -> Agent:
    return Agent(
        Settings(home=home),
        chat_model=_model(*answers or ("Paris [f-paris].",)),
        store=FakeStore(FACTS),
        playbook=FakePlaybook(),
        namespace=namespace,
        checkpointer=checkpointer,
    )


def test_look_alike_namespaces_have_separate_threads_in_one_checkpointer(tmp_path: Path) -> None:
    shared = InMemorySaver()  # e.g. one Postgres saver behind several tenants
    john, other = (_agent(tmp_path, ns, shared) for ns in LOOK_ALIKE)
    john.ask("capital of Zorbia?", thread_id="t1")
    john.ask("moon of Zorbia?", thread_id="t2")
    assert [t.thread_id for t in john.threads()] == ["t2", "t1"]
    assert other.threads() == []
    # the same thread id in the other tenant is another conversation: no history leaks
    other.ask("who am I?", thread_id="t1")
    assert [t.last_question for t in other.threads()] == ["who am I?"]
    assert john.why("t1").question == "capital of Zorbia?"
    other.delete_thread("t1")
    assert other.threads() == [] and [t.thread_id for t in john.threads()] == ["t2", "t1"]


def test_default_thread_store_per_namespace_survives_restart(tmp_path: Path) -> None:
    with _agent(tmp_path, "john_doe") as john:
        john.ask("capital of Zorbia?", thread_id="a")
    with _agent(tmp_path, "john-doe") as other:
        other.ask("moon of Zorbia?", thread_id="b")
    with _agent(tmp_path, "john_doe") as john, _agent(tmp_path, "john-doe") as other:
        assert [t.thread_id for t in john.threads()] == ["a"]
        assert [t.thread_id for t in other.threads()] == ["b"]


def test_graph_ainvoke_and_async_methods_on_the_default_checkpointer(tmp_path: Path) -> None:
    with _agent(tmp_path, "default", None, "Paris [f-paris].") as agent:

        async def go() -> None:
            cfg = {"configurable": {"thread_id": "raw"}}
            values = await agent.graph.ainvoke({"question": "capital of Zorbia?", "feedback": None}, cfg)
            assert values["cited_fact_ids"] == ["f-paris"]
            assert (await agent.graph.aget_state(cfg)).values["answer"] == values["answer"]
            result = await agent.aask("capital of Zorbia?", thread_id="x")
            assert result.answer == "Paris [f-paris]."
            kinds = [e.kind async for e in agent.astream("and the moon?", thread_id="x")]
            assert kinds[0] == "node" and kinds[-1] == "result"

        asyncio.run(go())
        # what the async calls wrote is what the sync API reads (one store, two loops)
        assert [t.thread_id for t in agent.threads()] == ["x"]
        assert agent.threads()[0].turns == 2
        history = agent.export("x")["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert isinstance(agent.graph.get_state(agent._config("x")).values["messages"][0], HumanMessage)
