"""The agent end to end with the real SmolLM2-135M, the real Chroma store and the real playbook.

One path (teach, ask in other words, the answer cites the fact) stays in the fast set; the rest
(restart, feedback, tool round trip, examples) are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from factflow.agent.api import Agent
from factflow.errors import UserError
from factflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
FACT = "The capital of Zorbia is Quillmar."
QUESTION = "Which city is the seat of government of Zorbia?"  # no word of the fact but "Zorbia"


def _settings(home: Path, models_dir: Path, **kw: Any) -> Settings:
    # answers here are one sentence: a short cap keeps the turns cheap on a 2-core CPU
    return Settings(home=home, models_dir=models_dir, max_new_tokens=48, **kw)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)  # holds conftest's FACTFLOW_MODELS_DIR: the shared pulled model
    env.update(
        FACTFLOW_HOME=str(home),
        HF_HUB_OFFLINE="1",
        FACTFLOW_MAX_NEW_TOKENS="48",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Any:
    with Agent(_settings(tmp_path_factory.mktemp("agent-home"), models_dir)) as a:
        yield a


def test_teach_then_ask_in_other_words_cites_the_fact(agent: Agent) -> None:
    other = agent.teach("Bananas are rich in potassium.")
    fact = agent.teach(FACT)
    result = agent.ask(QUESTION)
    assert fact.id in result.retrieved_fact_ids
    assert result.cited_fact_ids == [fact.id], result.answer
    assert other.id not in result.cited_fact_ids
    assert f"[{fact.id}]" in result.answer
    assert "quillmar" in result.answer.lower()
    assert result.writeback is not None  # the gate ran and recorded its decision
    assert {"retrieve", "render", "generate", "writeback"} <= set(result.timings)
    record = agent.why(result.thread_id)
    assert record.question == QUESTION and fact.id in {f["id"] for f in record.facts}


def test_bad_input_is_a_user_error(agent: Agent) -> None:
    with pytest.raises(UserError, match="empty"):
        agent.ask("   ")
    with pytest.raises(UserError, match="too long"):
        agent.ask("zorbia " * 20000)
    with pytest.raises(UserError, match="no answered question"):
        agent.feedback("never-used-thread", "correct")


@pytest.mark.slow
def test_stream_yields_tokens_then_result(agent: Agent) -> None:
    events = list(agent.stream("What is the capital of Zorbia?"))
    tokens = "".join(e.text for e in events if e.kind == "token")
    nodes = [e.node for e in events if e.kind == "node"]
    assert nodes[:2] == ["retrieve", "generate"] and nodes[-1] == "writeback"
    assert events[-1].kind == "result" and events[-1].result is not None
    assert tokens.strip() and not tokens.lstrip().startswith("{")  # the JSON action is unwrapped
    assert tokens.strip() in events[-1].result.answer


@pytest.mark.slow
def test_tool_call_round_trip_through_the_action_format(tmp_path: Path, models_dir: Path) -> None:
    @tool
    def secret_code(name: str) -> str:
        """Look up the secret code of a project by its name."""
        return f"The secret code of {name} is 4417."

    settings = _settings(tmp_path, models_dir, max_tool_rounds=2)
    with Agent(settings, tools=[secret_code], tool_choice="secret_code") as a:
        result = a.ask("What is the secret code of project alpha?")
        record = a.why(result.thread_id)
        messages = a.graph.get_state({"configurable": {"thread_id": result.thread_id}}).values["messages"]
    assert result.tool_rounds >= 1
    assert record.tool_calls[0]["name"] == "secret_code"
    assert isinstance(record.tool_calls[0]["args"]["name"], str)  # constrained by the tool's schema
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    assert "4417" in str(tool_messages[0].content)
    assert result.answer.strip()  # the model came back from the tool with a final answer


@pytest.mark.slow
def test_feedback_changes_the_playbook_version(agent: Agent) -> None:
    result = agent.ask("What is the capital of Zorbia?")
    out = agent.feedback(
        result.thread_id,
        "wrong: always answer with the exact city name from the facts and cite the fact id",
    )
    assert out.version > out.version_before, out.learn
    assert agent.playbook.version == out.version


@pytest.mark.slow
def test_thread_resumes_after_process_restart(tmp_path: Path) -> None:
    first = textwrap.dedent(
        f"""
        import json
        from factflow import Agent
        with Agent() as agent:
            agent.teach({FACT!r})
            r = agent.ask({QUESTION!r}, thread_id="t-restart")
            print(json.dumps({{"answer": r.answer}}))
        """
    )
    second = textwrap.dedent(
        """
        import json
        from factflow import Agent
        with Agent() as agent:
            before = agent.why("t-restart")
            r = agent.ask("And which country is that city in?", thread_id="t-restart")
            state = agent.graph.get_state({"configurable": {"thread_id": "t-restart"}}).values
            print(json.dumps({"threads": [t.thread_id for t in agent.threads()],
                              "before": before.answer,
                              "humans": [m.content for m in state["messages"] if m.type == "human"]}))
        """
    )
    outs = []
    for script in (first, second):
        proc = subprocess.run(
            [sys.executable, "-c", script], env=_env(tmp_path), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "t-restart" in outs[1]["threads"]
    assert outs[1]["before"] == outs[0]["answer"]
    assert outs[1]["humans"] == [QUESTION, "And which country is that city in?"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "prints"), [("embed_agent.py", "cited: ["), ("custom_tool.py", "tool calls: [")]
)
def test_examples_run(example: str, prints: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / example)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert prints in proc.stdout, proc.stdout
