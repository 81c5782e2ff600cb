"""Fact control through the agent: write-back off, app approval of each write-back (LangGraph
`interrupt`), `Agent.forget` and the REPL's `/forget`.

Real fact store (embedded Chroma + MiniLM) and real checkpoints; the chat model is the scripted
one from `_agent_fakes` (what it says is not under test; the real model runs in test_agent_e2e.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _agent_fakes import FakePlaybook, FakeToolCallingModel
from langchain_core.messages import AIMessage
from rich.console import Console

from factflow.agent.api import Agent
from factflow.agent.repl import Repl
from factflow.errors import UserError
from factflow.memory.store import FactStore
from factflow.settings import Settings

DOC = "Acme makes sensors. The Kestrel sensor was launched in 2019. It costs 40 euros."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # MiniLM: 1 thread on a shared box


def _agent(tmp_path: Path, answer: str, **settings: object) -> tuple[Agent, FactStore, str]:
    s = Settings(home=tmp_path, **settings)  # type: ignore[arg-type]
    store = FactStore.open(s)
    doc = store.teach(DOC).id
    model = FakeToolCallingModel(script=[AIMessage(content=answer.replace("DOC", doc))])
    return Agent(s, chat_model=model, store=store, playbook=FakePlaybook()), store, doc


def _model_facts(store: FactStore) -> list[str]:
    return [f.text for f in store.iter_facts() if f.origin == "model"]


def test_writeback_setting_off_writes_nothing(tmp_path: Path) -> None:
    agent, store, _ = _agent(
        tmp_path, "Acme's Kestrel sensor was launched in 2019 [DOC].", fact_writeback=False
    )
    with agent:
        result = agent.ask("When was the Kestrel launched?")
        assert result.writeback is None and _model_facts(store) == [] and store.audit_log() == []


def test_app_approves_or_declines_each_writeback(tmp_path: Path) -> None:
    claim = "Acme's Kestrel sensor was launched in 2019."
    agent, store, doc = _agent(tmp_path, f"{claim[:-1]} [DOC].", fact_writeback_approval=True)
    with agent:
        paused = agent.ask("When was the Kestrel launched?", thread_id="t1")
        assert paused.writeback is None and paused.writeback_pending == [claim]
        assert _model_facts(store) == []  # nothing written while waiting
        done = agent.confirm_writeback("t1", approve=True)
        assert done.writeback is not None and done.writeback.accepted and done.writeback_pending == []
        assert _model_facts(store) == [claim]
        with pytest.raises(UserError, match="no write-back waiting"):
            agent.confirm_writeback("t1", approve=True)

        store.invalidate(done.writeback.fact_ids[0])  # so the same claim is novel again
        agent.ask("And the launch year?", thread_id="t2")
        declined = agent.confirm_writeback("t2", approve=False)
        assert declined.writeback is not None and not declined.writeback.accepted
        assert declined.writeback.reasons == ["write-back declined by the app"]
        assert [f.text for f in store.iter_facts(valid_only=True) if f.origin == "model"] == []
        assert store.audit_log()[-1].reasons == ["write-back declined by the app"]
        assert doc in [f.id for f in store.iter_facts(valid_only=True)]


def test_forget_from_the_api_and_the_repl(tmp_path: Path) -> None:
    agent, store, doc = _agent(tmp_path, "Acme's Kestrel sensor was launched in 2019 [DOC].")
    with agent:
        result = agent.ask("When was the Kestrel launched?")
        assert result.writeback is not None and result.writeback.accepted, result.writeback
        derived = result.writeback.fact_ids[0]
        assert agent.forget(doc, reason="recalled") == [doc, derived]
        assert not store.get(doc).is_valid() and not store.get(derived).is_valid()  # type: ignore[union-attr]

        other = agent.teach("Brio makes valves.")
        console = Console(record=True, width=200)
        repl = Repl(agent, console)
        repl.handle(f"/forget [{other.id}] --delete")
        repl.handle("/forget")
        assert store.get(other.id) is None
    out = console.export_text()
    assert f"erased: {other.id}" in out and "usage: /forget <fact id>" in out
