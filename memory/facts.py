"""Fact records and gate verdicts: the data that crosses the fact store's boundary.

A fact is never deleted when it stops being true: it gets a `valid_to` (bi-temporal style, as in
Graphiti/Zep), so old answers stay explainable. `origin` says who wrote it; model-written facts
only get in through the write-back gate (`memory/verify.py`) and carry its report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Origin",
    "Label",
    "Fact",
    "ScoredFact",
    "VerifierResult",
    "ClaimVerdict",
    "WritebackDecision",
    "AuditEntry",
    "FactHistory",
    "utcnow",
]

Origin = Literal["human", "document", "model"]
Label = Literal["entailed", "neutral", "contradicted"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VerifierResult(_Strict):
    """One verifier's opinion on one claim. `score` is P(entailed) where the verifier has one."""

    verifier: str
    label: Label
    score: float = Field(ge=0.0, le=1.0)
    reason: str = ""


class ClaimVerdict(_Strict):
    """Everything the gate found about one atomic claim of an answer."""

    claim: str
    cited_ids: list[str] = Field(default_factory=list)
    citation_by: Literal["model", "system"] = Field(
        "model", description="Who attached the citations: the model, or the system after the fact (weaker)."
    )
    attributed: bool = False
    supported: bool = False
    novel: bool = False
    contradicts: list[str] = Field(default_factory=list, description="Stored fact ids it contradicts.")
    duplicate_of: str | None = None
    max_cosine: float = 0.0
    verifiers: list[VerifierResult] = Field(default_factory=list)
    accepted: bool = False
    reasons: list[str] = Field(default_factory=list)


class Fact(_Strict):
    """One stored fact with provenance and a validity interval."""

    id: str
    text: str
    namespace: str
    origin: Origin
    source_ids: list[str] = Field(default_factory=list, description="Facts/documents it came from.")
    created_at: datetime = Field(default_factory=utcnow)
    valid_from: datetime = Field(default_factory=utcnow)
    valid_to: datetime | None = Field(None, description="Set when the fact was invalidated.")
    superseded_by: str | None = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    verification: list[ClaimVerdict] | None = Field(None, description="Gate report for model facts.")

    def is_valid(self, at: datetime | None = None) -> bool:
        at = at or utcnow()
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


class ScoredFact(_Strict):
    """A search hit: fused reciprocal-rank score plus the rank in each list (None = not in it)."""

    fact: Fact
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    similarity: float | None = Field(
        None, description="Cosine of the query and the fact (None: found by BM25 only)."
    )


class WritebackDecision(_Strict):
    """Outcome of `FactStore.propose`: accepted answers become one model fact per claim."""

    accepted: bool
    fact_id: str | None = None
    fact_ids: list[str] = Field(default_factory=list)
    claims: list[ClaimVerdict] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


class AuditEntry(_Strict):
    """One line of the audit log: every accept/reject/invalidate with its reasons."""

    id: str
    at: datetime
    namespace: str
    action: Literal["accept", "reject", "invalidate", "delete", "error"]
    text: str
    fact_ids: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    decision: WritebackDecision | None = None


class FactHistory(_Strict):
    """Every version of a fact (the supersede chain, oldest first) and the audit entries naming them."""

    fact_id: str
    versions: list[Fact]
    audit: list[AuditEntry]
