"""Citations: which of the facts shown this turn an answer rests on.

Three sources, in order, all restricted to ids that were actually shown (a made-up id is never
kept): (1) `[id]` markers the model wrote; (2) when it wrote none, attribution: either
"similarity" (default) - a fact is cited when the answer embeds close to it (cosine >= threshold)
AND the answer repeats a content word of the fact that the question did not contain, i.e. the
fact contributed information - or "model": a constrained pass whose JSON schema is an enum of
the shown ids. Measured on SmolLM2-135M: the constrained pass listed every shown id, related or
not, so similarity is the default and "model" is for larger models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from factflow.agent.state import FactRef

__all__ = ["parse_citations", "strip_unknown_markers", "citation_model", "attribute", "is_abstention"]

_MARKER = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_\-:.]{0,80})\]")
_WORD = re.compile(r"[A-Za-z0-9]+")
_ABSTAIN = re.compile(
    r"\b(i\s+(do\s+not|don't|dont)\s+know|not\s+sure|no\s+information|cannot\s+(find|answer)|"
    r"can't\s+(find|answer)|unknown\s+to\s+me)\b",
    re.IGNORECASE,
)
_STOP_WORDS = (
    "the a an of in on at to for by with from and or is are was were be been it its this that these "
    "those what which who whom whose when where why how does do did has have had not no yes as into "
    "about than then there their them they you your our we he she his her"
)
_STOP = frozenset(_STOP_WORDS.split())


def parse_citations(answer: str, allowed: Sequence[str]) -> list[str]:
    """Ids written as `[id]` in `answer` that are in `allowed`, in order of first mention."""
    allowed_set = set(allowed)
    out: list[str] = []
    for found in _MARKER.findall(answer):
        if found in allowed_set and found not in out:
            out.append(found)
    return out


def strip_unknown_markers(answer: str, allowed: set[str]) -> str:
    """Drop `[id]` markers naming nothing shown this turn: a made-up citation is worse than none."""
    cleaned = _MARKER.sub(lambda m: m.group(0) if m.group(1) in allowed else "", answer)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip()


def is_abstention(answer: str) -> bool:
    return bool(_ABSTAIN.search(answer))


def _content_words(text: str) -> set[str]:
    return {w for w in (t.lower() for t in _WORD.findall(text)) if len(w) > 2 and w not in _STOP}


def attribute(
    question: str, answer: str, facts: Sequence[FactRef], embedder: Any, *, threshold: float, limit: int = 2
) -> list[str]:
    """Fact ids the answer rests on, by similarity plus contributed words (see module doc)."""
    if not facts or not answer.strip() or is_abstention(answer):
        return []
    asked = _content_words(question)
    said = _content_words(_MARKER.sub("", answer))
    vectors = embedder.embed([answer, *[f["text"] for f in facts]])  # (1 + F, dim), unit-norm
    cosines = np.asarray(vectors[1:] @ vectors[0])  # (F,)
    scored = [
        (float(cos), f["id"])
        for f, cos in zip(facts, cosines, strict=True)
        if cos >= threshold and (_content_words(f["text"]) & said) - asked
    ]
    return [fid for _, fid in sorted(scored, reverse=True)[:limit]]


def citation_model(fact_ids: Sequence[str], bullet_ids: Sequence[str] = ()) -> type[BaseModel]:
    """Pydantic model whose JSON schema only admits the given ids (an enum per list)."""
    fields: dict[str, Any] = {}
    if fact_ids:
        fact_t: Any = Literal[tuple(fact_ids)]  # a runtime enum: types built from data
        fields["cited_fact_ids"] = (
            list[fact_t],  # type: ignore[valid-type]
            Field(default_factory=list, max_length=min(2, len(fact_ids))),
        )
    if bullet_ids:
        bullet_t: Any = Literal[tuple(bullet_ids)]
        fields["used_bullet_ids"] = (
            list[bullet_t],  # type: ignore[valid-type]
            Field(default_factory=list, max_length=min(3, len(bullet_ids))),
        )
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "Citations", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model
