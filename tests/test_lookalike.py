"""Look-alike facts: the committed set, its grading, and the levers' pure logic (fast); the
agent's answer recall on the set with the real default model (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from factflow.agent.graph import build_graph
from factflow.agent.turn_policy import answer_spans, focus_facts
from factflow.errors import UserError
from factflow.evals.lab_data import RELATIONS
from factflow.evals.lookalike import DEFAULT_CASES, grade, load_cases, summary_lines
from factflow.memory.facts import Fact, ScoredFact
from factflow.settings import Settings

DATA = Path(__file__).parent / "data"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_lookalike_cases", DATA / "make_lookalike_cases.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_set_is_what_the_generator_writes() -> None:
    made = "".join(json.dumps(c, sort_keys=True) + "\n" for c in _generator().make_cases())
    assert (DATA / "lookalike_cases.jsonl").read_text(encoding="utf-8") == made


def test_set_asks_look_alikes_in_other_words() -> None:
    cases = load_cases(DEFAULT_CASES)
    assert len(cases) >= 60
    for c in cases:
        assert c.fact in c.facts and c.expected in c.fact
        assert c.question.rstrip("?.") not in c.fact and c.expected not in c.question
        # at least four more facts in its namespace differ from it only in subject and value
        words = c.fact.split()
        family = [f for f in c.facts if len(set(f.split()) & set(words)) >= len(words) - 4]
        assert len(family) >= 5, c.fact
    assert len({c.question for c in cases}) == len(cases)


def test_templates_are_not_the_labs() -> None:
    families = _generator().FAMILIES
    ours = {t for statement, questions in families.values() for t in (statement, *questions)}
    lab = {t for r in RELATIONS.values() for t in (r.statement, r.train_question, *r.paraphrases)}
    assert not ours & lab


def test_grade_ignores_citation_markers() -> None:
    case = load_cases(DEFAULT_CASES)[0]
    wrong_id = f"[f-{case.expected.split()[0]}]"  # an id that holds the value must not count
    assert not grade(case, f"I do not know. {wrong_id}", [case.fact]).right
    good = grade(case, f"It is {case.expected}. [f-1a2b]", [case.fact])
    assert good.right and good.cited and good.cited_right
    other = grade(case, case.expected, [f for f in case.facts if f != case.fact][:1])
    assert other.cited and not other.cited_right
    lines = summary_lines([good, other], "t")
    assert lines[0] == "t: answer recall   1.00 [0.34, 1.00] n=2"
    assert lines[2].startswith("t: right citation  0.50")


def test_bad_case_file_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="cases.jsonl:1 is not a look-alike case"):
        load_cases(bad)
    with pytest.raises(UserError, match="no look-alike cases"):
        load_cases(tmp_path / "missing.jsonl")


def test_eval_command_rejects_an_unknown_engine() -> None:
    from factflow.agent.cli import app

    result = CliRunner().invoke(app, ["eval", "lookalike", "--engines", "gpu"])
    assert isinstance(result.exception, UserError)  # `main` prints it and exits 2
    assert "use transformers, vllm or both" in str(result.exception)


def _hit(text: str, score: float, similarity: float | None) -> ScoredFact:
    fact = Fact(id=f"f-{text[:3].lower()}", text=text, namespace="t", origin="human")
    return ScoredFact(fact=fact, score=score, similarity=similarity)


def test_focus_facts_cuts_at_the_gap_and_puts_the_best_last() -> None:
    hits = [_hit("Alpha", 0.03, 0.80), _hit("Beta", 0.02, 0.77), _hit("Gamma", 0.01, 0.60)]
    hits.append(_hit("Delta", 0.005, None))
    assert [f["text"] for f in focus_facts(hits)] == ["Alpha", "Beta", "Gamma", "Delta"]
    assert [f["text"] for f in focus_facts(hits, gap=0.05)] == ["Alpha", "Beta"]
    assert [f["text"] for f in focus_facts(hits, gap=0.05, order="best_last")] == ["Beta", "Alpha"]
    lexical_only = [_hit("Delta", 0.01, None)]
    assert [f["text"] for f in focus_facts(lexical_only, gap=0.05)] == ["Delta"]  # nothing to compare


def test_answer_spans_are_the_words_the_question_lacks() -> None:
    fact = "The chief executive of Korvane Dynamics is Ada Brenn."
    assert answer_spans("Who runs Korvane Dynamics as its CEO?", fact) == ["chief executive", "Ada Brenn"]
    bridge = "The Lunn bridge is 275 metres long."
    assert answer_spans("How many metres does the Lunn bridge span?", bridge) == ["275", "long"]
    assert answer_spans("Is it?", "") == []


def _ask(answer: str, question: str, span: dict[str, str] | None = None) -> tuple[str, int]:
    model = FakeToolCallingModel(script=[AIMessage(content=answer)], citations=span or {})
    settings = Settings(agent_answer_span=True, fact_writeback=False)
    graph = build_graph(
        model, FakeStore(FACTS), FakePlaybook(), checkpointer=InMemorySaver(), settings=settings
    )
    out = graph.invoke({"question": question}, {"configurable": {"thread_id": "t"}})
    return out["answer"], model.structured_calls


def test_answer_span_step_replaces_a_wrong_value_with_the_best_facts() -> None:
    # one candidate ("Paris"): copied without a model call
    assert _ask("The capital of Zorbia is Blue.", "Which city is the capital of Zorbia?") == (
        "Paris [f-paris]",
        0,
    )
    # an answer that already holds the value stays as written
    assert _ask("It is Paris.", "Which city is the capital of Zorbia?")[0].startswith("It is Paris.")
    # several candidates: the model picks one from the enum
    answer, calls = _ask("No idea.", "What is the capital?", span={"span": "Zorbia"})
    assert (answer, calls) == ("Zorbia [f-paris]", 1)


@pytest.mark.slow
def test_agent_answers_look_alikes_right_on_transformers(hf_chat) -> None:  # type: ignore[no-untyped-def]
    """The goal: the value in the answer for >= 0.85 of the questions, default model, greedy,
    with the levers that measured best (docs/agent.md: a 0.05 cosine gap cut + the answer span)."""
    from factflow.evals.lookalike import run_lookalike

    levers = {"agent_fact_gap": 0.05, "agent_answer_span": True}
    results = run_lookalike(hf_chat, load_cases(DEFAULT_CASES), settings_overrides=levers)
    recall = sum(r.right for r in results) / len(results)
    assert recall >= 0.85, "\n".join(summary_lines(results))
