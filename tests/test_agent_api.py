"""The Python API's plumbing on a scripted model: sync/async/streaming turns, threads in SQLite.

Real SqliteSaver, real checkpoint files; the model, store and playbook are the scripted fakes
(the real ones run in test_agent_e2e.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage

from factflow.agent.api import Agent, AnswerExtractor, AskResult, StreamEvent
from factflow.settings import Settings


def _agent(home: Path, *answers: str) -> Agent:
    model = FakeToolCallingModel(script=[AIMessage(content=a) for a in answers])
    return Agent(Settings(home=home), chat_model=model, store=FakeStore(FACTS), playbook=FakePlaybook())


def test_threads_persist_in_sqlite_and_can_be_deleted(tmp_path: Path) -> None:
    with _agent(tmp_path, "Paris [f-paris].") as agent:
        first = agent.ask("capital of Zorbia?", thread_id="a")
        agent.ask("moon of Zorbia?", thread_id="b")
    assert first.cited_fact_ids == ["f-paris"] and first.thread_id == "a"
    with _agent(tmp_path, "again") as agent:  # a new Agent on the same HOME: a restart
        assert [t.thread_id for t in agent.threads()] == ["b", "a"]
        assert agent.why("a").answer == "Paris [f-paris]."
        exported = agent.export("a")
        assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
        agent.delete_thread("a")
        assert [t.thread_id for t in agent.threads()] == ["b"]


def _summary(result: AskResult) -> tuple[str, list[str], list[str], list[str]]:
    return result.answer, result.cited_fact_ids, result.retrieved_fact_ids, result.used_bullet_ids


def _events(events: list[StreamEvent]) -> list[tuple[str, str | None, str]]:
    return [(e.kind, e.node, e.text) for e in events]


def test_async_variants_match_sync(tmp_path: Path) -> None:
    question = "capital of Zorbia?"
    with _agent(tmp_path, "Paris [f-paris].") as agent:
        sync_result = agent.ask(question, thread_id="s1")
        sync_events = list(agent.stream(question, thread_id="s2"))

        async def go() -> tuple[AskResult, list[StreamEvent]]:
            result = await agent.aask(question, thread_id="a1")
            events = [e async for e in agent.astream(question, thread_id="a2")]
            return result, events

        async_result, async_events = asyncio.run(go())
    assert _summary(async_result) == _summary(sync_result)
    assert sync_result.answer == "Paris [f-paris]." and sync_result.cited_fact_ids == ["f-paris"]
    assert _events(async_events) == _events(sync_events)
    assert sync_events[0].kind == "node" and sync_events[-1].kind == "result"
    assert sync_events[-1].result is not None and async_events[-1].result is not None
    assert _summary(async_events[-1].result) == _summary(sync_events[-1].result)


def test_feedback_runs_the_learn_path(tmp_path: Path) -> None:
    with _agent(tmp_path, "Paris [f-paris].") as agent:
        result = agent.ask("capital of Zorbia?")
        out = agent.feedback(result.thread_id, {"label": "correct", "tests_passed": 3})
    assert (out.version_before, out.version) == (1, 2)
    assert agent.playbook.learned[0][2] == '{"label": "correct", "tests_passed": 3}'


def test_answer_extractor_unwraps_streamed_json_actions() -> None:
    pieces = [
        '{"act',
        'ion": "final_answer", "ans',
        'wer": "Quill',
        'mar is \\"the\\" cap',
        "ital\\u00e9",
        '"}',
    ]
    ex = AnswerExtractor()
    assert "".join(ex.feed(p) for p in pieces) == 'Quillmar is "the" capitalé'
    plain = AnswerExtractor()
    assert "".join(plain.feed(p) for p in ["The ", "capital."]) == "The capital."
    tool = AnswerExtractor()
    assert "".join(tool.feed(p) for p in ['{"action": "calculator", ', '"arguments": {"x": 1}}']) == ""
