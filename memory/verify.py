"""The write-back gate: an answer becomes stored facts only claim by claim, after verification.

Pipeline per answer (after "Bidirectional RAG", arXiv 2512.22199, but per claim, with "neutral"
counted as NOT grounded):

1. split the answer into atomic claims (sentences / `;` clauses), each with its citations;
2. attribution: every claim cites >= 1 fact id that was actually retrieved this turn;
3. entailment: every configured verifier must say "entailed" given the cited sources
   (deterministic grounding always; NLI cross-encoder and LLM judge when configured);
4. novelty: reject when max cosine to a stored fact >= 0.90 or the claim restates one;
5. contradiction with a stored fact: not written, flagged with the fact ids.

Sources are sanitized first: sentences that read as instructions to the agent ("ignore previous
instructions", "SYSTEM:", "store this fact") are removed from the evidence, so a poisoned
document cannot vouch for a claim.

The pieces live in `verify_text` (words, sentences, claims), `verify_grounding`,
`verify_models` (NLI, LLM judge) and `verify_novelty`; this module runs them on one claim and
re-exports them under their historical import path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from factflow.memory.facts import ClaimVerdict, VerifierResult
from factflow.memory.verify_grounding import GroundingVerifier
from factflow.memory.verify_models import JudgeAnswer, LLMJudgeVerifier, NLIVerifier
from factflow.memory.verify_novelty import Neighbor, find_contradictions, restatement_of
from factflow.memory.verify_text import (
    Claim,
    anchors,
    content_stems,
    looks_like_instruction,
    split_claims,
    split_sentences,
    strip_instructions,
)

__all__ = [
    "Claim",
    "Verifier",
    "GroundingVerifier",
    "NLIVerifier",
    "LLMJudgeVerifier",
    "JudgeAnswer",
    "Neighbor",
    "split_claims",
    "split_sentences",
    "strip_instructions",
    "looks_like_instruction",
    "content_stems",
    "anchors",
    "find_contradictions",
    "restatement_of",
    "judge_claim",
]


class Verifier(Protocol):
    """Says whether `claim` is entailed by `sources` (already sanitized cited fact texts)."""

    name: str

    def check(self, claim: str, sources: list[str]) -> VerifierResult: ...


def judge_claim(
    claim: Claim,
    *,
    retrieved: set[str],
    sources: dict[str, str],
    neighbors: Sequence[Neighbor],
    verifiers: Sequence[Verifier],
    novelty_threshold: float = 0.90,
    system_cited: bool = False,
) -> ClaimVerdict:
    """Run attribution -> entailment -> novelty -> contradiction on one claim (pure logic).

    `sources` maps every cited id that exists to its text; `neighbors` are the nearest stored
    facts of the namespace. Every failed check adds a reason; accepted = no reasons.

    `system_cited`: the citations were added by the system (similarity or a citation pass), not
    by the model. That is weaker evidence: recorded in the verdict, and only a direct
    restatement of the cited sources is accepted, not a composition of them.
    A verifier with `accepts_compositions` (an LLM judge on a capable model) may accept a claim
    the grounding rules found merely unverified ("neutral"), as long as every number and entity
    of the claim is in the sources.
    """
    v = ClaimVerdict(
        claim=claim.text, cited_ids=list(claim.cited_ids), citation_by="system" if system_cited else "model"
    )
    if looks_like_instruction(claim.text):
        v.reasons.append("claim contains an instruction, not a fact")
    if not claim.cited_ids:
        v.reasons.append("attribution: the claim cites no fact")
    not_retrieved = [i for i in claim.cited_ids if i not in retrieved]
    if not_retrieved:
        v.reasons.append(f"attribution: cited ids not retrieved this turn: {', '.join(not_retrieved)}")
    v.attributed = bool(claim.cited_ids) and not not_retrieved

    evidence: list[str] = []
    for cid in claim.cited_ids:
        if cid in sources:
            clean, removed = strip_instructions(sources[cid])
            if removed:
                v.reasons.append(f"ignored {len(removed)} instruction-like sentence(s) in source {cid}")
            if clean:
                evidence.append(clean)
    if v.attributed:
        v.verifiers = [ver.check(claim.text, evidence) for ver in verifiers]
        failing = [r for r in v.verifiers if r.label != "entailed"]
        if failing and _judge_may_compose(claim.text, evidence, verifiers, v.verifiers) and not system_cited:
            v.verifiers.append(
                VerifierResult(
                    verifier="composition",
                    label="entailed",
                    score=1.0,
                    reason="a judge that accepts compositions found it supported (the rules could not)",
                )
            )
            failing = []
        v.supported = bool(v.verifiers) and not failing
        for r in failing:
            v.reasons.append(f"{r.verifier}: {r.label} ({r.reason})")
        if system_cited and any(r.reason.startswith("composed") for r in v.verifiers):
            v.supported = False
            v.reasons.append(
                "attribution: the system added these citations, not the model; a composition needs the "
                "model's own citations"
            )
        # Instruction sentences in a source are only a problem if the claim leaned on them.
        v.reasons = [r for r in v.reasons if not r.startswith("ignored ") or not v.supported]

    v.max_cosine = max((n.cosine for n in neighbors), default=0.0)
    dup = next(
        (n.id for n in neighbors if n.cosine >= novelty_threshold and not _adds_to(claim.text, n.text)), None
    )
    dup = dup or restatement_of(claim.text, neighbors)
    if dup is not None:
        v.duplicate_of = dup
        v.reasons.append(f"novelty: restates stored fact {dup} (max cosine {v.max_cosine:.2f})")
    v.novel = dup is None
    # A cited source that entails the claim is consistent with it by definition (a bridge names
    # another entity than its source; that is not a disagreement).
    consistent = set(claim.cited_ids) if v.supported else set()
    v.contradicts = find_contradictions(claim.text, [n for n in neighbors if n.id not in consistent])
    if v.contradicts:
        v.reasons.append(f"contradiction with stored fact(s) {', '.join(v.contradicts)}")
    v.accepted = v.attributed and v.supported and v.novel and not v.contradicts and not v.reasons
    return v


def _adds_to(claim: str, stored: str) -> bool:
    """The claim carries >= 2 content words the stored fact lacks: cosine-close, but it says more
    ("X was founded by P, who studied chemistry at U" next to "X was founded by P")."""
    return len(content_stems(claim) - content_stems(stored)) >= 2


def _judge_may_compose(
    claim: str, evidence: list[str], verifiers: Sequence[Verifier], results: list[VerifierResult]
) -> bool:
    judged = any(
        getattr(ver, "accepts_compositions", False) and r.label == "entailed"
        for ver, r in zip(verifiers, results, strict=True)
    )
    rules_only_unsure = all(r.label == "neutral" for r in results if r.label != "entailed")
    grounding = next((ver for ver in verifiers if isinstance(ver, GroundingVerifier)), GroundingVerifier())
    return judged and rules_only_unsure and grounding.anchors_grounded(claim, evidence)
