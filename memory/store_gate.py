"""Write-back gate orchestration: an answer -> claims -> verdicts -> model facts + one audit entry.

The per-claim logic is `memory/verify.py` (pure); this module fetches what it needs from the
store (cited sources, nearest stored facts), writes accepted claims and logs the decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from factflow.errors import UserError
from factflow.memory.facts import Fact, WritebackDecision
from factflow.memory.store_search import nearest
from factflow.memory.verify import (
    GroundingVerifier,
    LLMJudgeVerifier,
    Neighbor,
    NLIVerifier,
    Verifier,
    judge_claim,
    looks_like_instruction,
    restatement_of,
    split_claims,
)
from factflow.settings import Settings

if TYPE_CHECKING:
    from factflow.memory.store import FactStore

__all__ = ["default_verifiers", "propose"]


def default_verifiers(settings: Settings) -> list[Verifier]:
    """Deterministic grounding, + NLI / HF judge when configured in settings."""
    vs: list[Verifier] = [GroundingVerifier()]
    if settings.fact_nli_model:
        vs.append(NLIVerifier(settings.fact_nli_model, settings.fact_nli_threshold))
    if settings.fact_judge_model:
        from factflow.serving.models import resolve_model

        path = resolve_model(settings.model_copy(update={"model": settings.fact_judge_model}))
        vs.append(
            LLMJudgeVerifier.from_model_path(
                path,
                settings.fact_judge_threshold,
                accepts_compositions=settings.fact_judge_accepts_compositions,
            )
        )
    return vs


def propose(
    store: FactStore,
    answer: str,
    cited_ids: list[str],
    retrieved_ids: list[str],
    *,
    namespace: str | None = None,
    chat_model: Any = None,
    verifiers: Sequence[Verifier] | None = None,
    dry_run: bool = False,
    system_cited: bool = False,
) -> WritebackDecision:
    """Run the write-back gate; every accepted claim becomes one model fact (unless dry_run).

    `system_cited`: the citations were attached by the system, not the model (weaker evidence,
    recorded in each verdict). A claim that repeats an earlier claim of the same answer is
    rejected as not novel, like one that repeats a stored fact.
    """
    ns = store.namespace_of(namespace)
    answer = store._check_text(answer, "answer")
    claims = split_claims(answer, cited_ids)
    all_cited = sorted({c for cl in claims for c in cl.cited_ids} | set(cited_ids))
    known = {f.id: f for f in store.get_many(all_cited, namespace=ns)}
    unknown = [c for c in all_cited if c not in known]
    if unknown:
        store.log(ns, "error", answer, [], [f"unknown cited ids: {', '.join(unknown)}"])
        raise UserError(
            f"unknown fact id(s) {', '.join(unknown)} in namespace {ns!r}: cite ids returned by search_facts"
        )
    active = list(verifiers) if verifiers is not None else list(store.verifiers())
    if chat_model is not None:
        active.append(
            LLMJudgeVerifier.from_chat_model(
                chat_model,
                store.settings.fact_judge_threshold,
                accepts_compositions=store.settings.fact_judge_accepts_compositions,
            )
        )
    sources = {i: f.text for i, f in known.items() if f.is_valid()}
    near = nearest(store, [c.text for c in claims], ns)
    verdicts = [
        judge_claim(
            c,
            retrieved=set(retrieved_ids),
            sources=sources,
            neighbors=nb,
            verifiers=active,
            novelty_threshold=store.settings.fact_novelty_threshold,
            system_cited=system_cited,
        )
        for c, nb in zip(claims, near, strict=True)
    ]
    for j, v in enumerate(verdicts):  # novelty within the answer: an earlier claim counts as stored
        earlier = [Neighbor(f"claim {i + 1} of this answer", verdicts[i].claim, 0.0) for i in range(j)]
        again = restatement_of(v.claim, earlier)
        if again is not None and v.accepted:
            v.accepted, v.novel, v.duplicate_of = False, False, again
            v.reasons.append(f"novelty: repeats {again}")
    reasons: list[str] = []
    if not claims:
        reasons.append("no factual claims found in the answer")
    if looks_like_instruction(answer):
        reasons.append("the answer contains an instruction: nothing is written")
        for v in verdicts:
            v.accepted = False
    written: list[str] = []
    facts: list[Fact] = []
    for v in verdicts:
        if not v.accepted:
            continue
        fact = Fact(
            id=f"m-{uuid.uuid4().hex[:16]}",
            text=v.claim,
            namespace=ns,
            origin="model",
            source_ids=v.cited_ids,
            verification=[v],
        )
        facts.append(fact)
        written.append(fact.id)
    if facts and not dry_run:
        store._write(ns, facts)
    for v in verdicts:
        if not v.accepted:
            reasons.append(f"rejected '{v.claim[:80]}': {'; '.join(v.reasons)}")
    decision = WritebackDecision(
        accepted=bool(written),
        fact_id=written[0] if written else None,
        fact_ids=written,
        claims=verdicts,
        reasons=reasons,
    )
    if not dry_run:
        store.log(ns, "accept" if written else "reject", answer, written, reasons, decision)
    return decision
