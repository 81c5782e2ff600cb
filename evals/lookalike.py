"""Look-alike facts: does the agent answer with the right one of several facts that look alike?

A store holding "The chief executive of Korvane Dynamics is Ada Brenn." and four more facts that
differ only in the company and the name is where a 135M model cites a fact and still copies the
wrong name. The set (tests/data/lookalike_cases.jsonl, made by make_lookalike_cases.py) teaches
each namespace's facts, then asks every question in a fresh thread of the real `Agent`.

    answer recall   the expected value appears in the answer (memory/answer_match.contains_match,
                    after the `[id]` markers are removed)
    citation rate   the answer cites at least one fact
    right citation  the answer cites the fact that answers the question

Each rate is printed with its n and a 95% Wilson interval (evals/stats.py).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from factflow.errors import UserError
from factflow.evals.stats import fmt_rate
from factflow.memory.answer_match import contains_match
from factflow.settings import Settings, get_settings

__all__ = [
    "LookalikeCase",
    "CaseResult",
    "DEFAULT_CASES",
    "load_cases",
    "grade",
    "summary_lines",
    "run_lookalike",
]

DEFAULT_CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "lookalike_cases.jsonl"
_MARKER = re.compile(r"\[[^\[\]]*\]")  # `[f-1a2b]`: an id can hold digits that look like a value


class LookalikeCase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    namespace: str
    facts: list[str]
    question: str
    expected: str
    fact: str
    family: str


class CaseResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    family: str
    question: str
    expected: str
    answer: str
    cited: bool
    cited_right: bool
    right: bool


def load_cases(path: Path = DEFAULT_CASES) -> list[LookalikeCase]:
    """The cases of a jsonl file; a missing file or a bad line is a UserError naming it."""
    if not path.is_file():
        raise UserError(
            f"no look-alike cases at {path}: run tests/data/make_lookalike_cases.py or pass --cases"
        )
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            cases.append(LookalikeCase.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise UserError(f"{path}:{n} is not a look-alike case ({exc}); regenerate the file") from None
    if not cases:
        raise UserError(f"{path} holds no cases; regenerate it with tests/data/make_lookalike_cases.py")
    return cases


def grade(case: LookalikeCase, answer: str, cited_texts: Sequence[str]) -> CaseResult:
    """One answer against its case: the value in the text (markers removed), and what it cites."""
    return CaseResult(
        id=case.id,
        family=case.family,
        question=case.question,
        expected=case.expected,
        answer=answer,
        cited=bool(cited_texts),
        cited_right=case.fact in cited_texts,
        right=contains_match(_MARKER.sub(" ", answer), case.expected),
    )


def summary_lines(results: Sequence[CaseResult], label: str = "") -> list[str]:
    """Answer recall, citation rate and right-citation rate, each with n and a Wilson interval."""
    n = len(results)
    head = f"{label}: " if label else ""
    lines = [
        f"{head}answer recall   {fmt_rate(sum(r.right for r in results), n)}",
        f"{head}citation rate   {fmt_rate(sum(r.cited for r in results), n)}",
        f"{head}right citation  {fmt_rate(sum(r.cited_right for r in results), n)}",
    ]
    for family in sorted({r.family for r in results}):
        rows = [r for r in results if r.family == family]
        lines.append(f"{head}  {family:<8} recall {fmt_rate(sum(r.right for r in rows), len(rows))}")
    return lines


def run_lookalike(
    chat_model: Any,
    cases: Sequence[LookalikeCase],
    *,
    settings: Settings | None = None,
    settings_overrides: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Teach each namespace's facts into a fresh store, ask every question in a new thread.

    Write-back is off, so one answer never becomes a fact the next question sees.
    `settings_overrides` set agent settings for the run (e.g. {"agent_top_k": 2}) on top of
    `settings` (default: the configured ones); HOME is a temporary folder.
    """
    from factflow.agent.api import Agent
    from factflow.memory.store import FactStore

    with tempfile.TemporaryDirectory(prefix="factflow-lookalike-", dir=work_dir) as tmp:
        base = settings or get_settings()
        fixed = {"home": Path(tmp), "models_dir": base.resolved_models_dir, "fact_writeback": False}
        # models_dir stays: a HOME of its own would pull (convert) the default model again
        run = Settings(**{**base.model_dump(), **(settings_overrides or {}), **fixed})
        results: list[CaseResult] = []
        for i, ns in enumerate(dict.fromkeys(c.namespace for c in cases)):
            asked = [c for c in cases if c.namespace == ns]
            store = FactStore.open(run, path=Path(tmp) / f"chroma-{i}")  # Agent.close closes it
            agent = Agent(run, chat_model=chat_model, store=store, persist=False, namespace=ns)
            try:
                for fact in dict.fromkeys(f for c in asked for f in c.facts):
                    agent.teach(fact)
                for case in asked:
                    res = agent.ask(case.question)
                    cited = [f.text for f in store.get_many(res.cited_fact_ids, namespace=ns)]
                    result = grade(case, res.answer, cited)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
            finally:
                agent.close()
    return results
