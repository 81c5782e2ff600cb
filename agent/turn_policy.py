"""Small policies of one agent turn, kept apart from the graph's wiring (agent/graph.py).

`tools_could_help`: whether the decide step can change the answer, or may be skipped.
`focus_facts`: which retrieved facts the prompt shows, in which order (look-alike facts).
`answer_spans`: where a fact's value is, for the answer-span step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from factflow.agent.state import FactRef

__all__ = ["tools_could_help", "focus_facts", "answer_spans", "span_model"]


# Words that ask for arithmetic over facts: the calculator could change the answer.
_ARITHMETIC_WORDS = frozenset(
    [
        "sum", "total", "difference", "plus", "minus", "times", "multiplied", "divided", "product",
        "average", "mean", "percent", "percentage", "ratio", "twice", "half", "double", "triple",
        "sqrt", "square", "root", "combined", "together", "older", "younger", "longer", "shorter",
        "taller", "heavier", "lighter", "bigger", "smaller", "larger", "more", "fewer", "less", "than",
        "between", "compare", "calculate", "compute", "many", "much",
    ]
)


def tools_could_help(question: str, *, user_tools: bool, rounds: int) -> bool:
    """Whether a tool call could change this step's answer, i.e. whether `decide` must run.

    The built-in tools only re-read the store (`search_facts`, `get_fact`) or do arithmetic
    (`calculator`). `retrieve` already searched the store with the question, so on a turn's first
    round a second search adds nothing the prompt does not hold, and the calculator matters only
    for a question with a number or an arithmetic word. User tools can do anything, and after a
    tool round the model may want the next one, so in those cases the model decides.
    """
    if user_tools or rounds > 0:
        return True
    words = set(re.findall(r"[a-z]+", question.lower()))
    return bool(re.search(r"\d|[%+*/=<>^-]", question)) or bool(words & _ARITHMETIC_WORDS)


def focus_facts(hits: Sequence[Any], *, gap: float = 0.0, order: str = "best_first") -> list[FactRef]:
    """The search hits the prompt shows, as `FactRef`s.

    With `gap` > 0 only facts whose question cosine (`ScoredFact.similarity`) is within `gap` of
    the best one stay: a 135M model shown five facts that differ in one name copies the wrong
    name, shown one it copies the right one. "best_last" puts the best fact nearest the question.
    """
    kept = list(hits)
    sims = [h.similarity for h in kept if getattr(h, "similarity", None) is not None]
    if gap > 0 and sims:
        floor = max(sims) - gap
        kept = [h for h in kept if h.similarity is not None and h.similarity >= floor]
    facts: list[FactRef] = [{"id": h.fact.id, "text": h.fact.text, "score": float(h.score)} for h in kept]
    return facts[::-1] if order == "best_last" else facts


_SPAN_STOP = frozenset(
    ["the", "a", "an", "of", "is", "was", "are", "were", "be", "by", "at", "in", "on", "to", "and", "or",
     "its", "it", "has", "have", "for", "with", "as", "from", "this", "that"]
)  # fmt: skip


def answer_spans(question: str, fact: str) -> list[str]:
    """Runs of the fact's words that the question does not hold: where the fact's value is.

    "The chief executive of Korvane Dynamics is Ada Brenn." asked "Who runs Korvane Dynamics as
    its CEO?" gives ["chief executive", "Ada Brenn"]. Stop words end a run; so do question words
    (compared without a plural or verb "s").
    """
    asked = {w.lower().rstrip("s") for w in re.findall(r"[A-Za-z0-9]+", question)}  # "Zorbia's" -> zorbia
    runs: list[list[str]] = [[]]
    for word in re.findall(r"[A-Za-z0-9'.]*[A-Za-z0-9']", fact):
        low = word.lower()
        if low in _SPAN_STOP or low.rstrip("s") in asked:
            runs.append([])
        else:
            runs[-1].append(word)
    return list(dict.fromkeys(" ".join(r) for r in runs if r))


def span_model(spans: Sequence[str]) -> type[BaseModel]:
    """`{"span": <one of spans>}`: the answer-span step picks among the candidates."""
    fields: dict[str, Any] = {"span": (Literal[tuple(spans)], ...)}  # a runtime enum
    model: type[BaseModel] = create_model("AnswerSpan", __config__=ConfigDict(extra="forbid"), **fields)
    return model
