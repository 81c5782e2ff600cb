"""Deterministic grounding of a claim in its cited sources (the gate's always-on verifier)."""

from __future__ import annotations

from factflow.memory.facts import VerifierResult
from factflow.memory.verify_compose import active_voice, compose, conjuncts, uses_definition
from factflow.memory.verify_text import (
    NEGATIONS,
    STOPWORDS,
    anchors,
    content_stems,
    is_number,
    negated,
    split_sentences,
    stem,
    tokens,
)

__all__ = ["GroundingVerifier"]


class GroundingVerifier:
    """Deterministic grounding: the claim may only use what its cited sources say.

    Checks, all required for "entailed": every number/date and named-entity span of the claim
    appears in the sources; every content word (stemmed) appears in the sources; a negation
    in the claim appears in the supporting sentence (and vice versa); each anchor appears in a
    source sentence that also holds >= 1/3 of its neighbouring content words (stops gluing an
    entity from one source onto a relation from another); anchors that share a source sentence
    keep that sentence's order (stops "B founded A" from "A founded B").
    """

    name = "grounding"

    def __init__(self, min_coverage: float = 1.0, context: int = 2, min_context: float = 0.33) -> None:
        self.min_coverage = min_coverage
        self.context = context
        self.min_context = min_context

    def check(self, claim: str, sources: list[str]) -> VerifierResult:
        """Entailed when grounded as it stands or through a composition (`verify_compose`).

        A claim that names an entity by a description a cited sentence defines ("the capital of
        Zorbia") is only checked with the entity in its place: read as loose words it could glue
        the description onto a fact about another entity.
        """

        def grounded(text: str) -> bool:
            # A passive claim says what its active form says: "Quillmar was founded by Ilse Varga"
            # is "Ilse Varga founded Quillmar", so the order rule catches "X was founded by Y".
            # A shared subject must hold for each part: "X makes sensors and employs 120 people"
            # needs "X employs 120 people", not just "employs 120 people" somewhere.
            if uses_definition(text, sources) or self._problems(active_voice(text) or text, sources):
                return False
            return all(grounded(part) for _, part, borrowed in conjuncts(text) if borrowed)

        bridged = uses_definition(claim, sources)
        problems = (
            ["names an entity by a description a source defines"]
            if bridged
            else self._problems(active_voice(claim) or claim, sources)
        )
        glued = [part for _, part, borrowed in conjuncts(claim) if borrowed and not grounded(part)]
        if not problems and glued:
            problems = [f"'{glued[0]}' is not in the sources: the shared subject glues two facts"]
        if not problems:
            return VerifierResult(verifier=self.name, label="entailed", score=1.0, reason="grounded")
        if not any(p.startswith("contradict") for p in problems):
            how = compose(claim, sources, grounded)
            if how is not None and how.entailed:
                return VerifierResult(
                    verifier=self.name,
                    label="entailed",
                    score=1.0,
                    reason=f"composed ({how.kind}): {how.detail}",
                )
            if how is not None:
                reason = f"contradicts its sources: computed {how.kind} says otherwise ({how.detail})"
                return VerifierResult(verifier=self.name, label="contradicted", score=0.0, reason=reason)
        label = "contradicted" if any(p.startswith("contradict") for p in problems) else "neutral"
        return VerifierResult(verifier=self.name, label=label, score=0.0, reason="; ".join(problems))

    def anchors_grounded(self, claim: str, sources: list[str]) -> bool:
        """Every number and named entity of the claim appears in the sources (what a judge that
        may accept compositions still has to respect)."""
        return not any(p.startswith(("number ", "entity ")) for p in self._problems(claim, sources))

    def _problems(self, claim: str, sources: list[str]) -> list[str]:
        sentences = [s for src in sources for s in split_sentences(src)]
        if not sentences:
            return ["no usable source text"]
        sent_stems = [content_stems(s) for s in sentences]
        sent_text = [" " + " ".join(t.lower() for t in tokens(s)) + " " for s in sentences]
        sent_anchor = [[a for _, a in anchors(s)] for s in sentences]
        all_stems = set().union(*sent_stems)
        problems: list[str] = []

        claim_anchors = anchors(claim)
        claim_anchor_vals = [a for _, a in claim_anchors]
        for kind, value in claim_anchors:
            found = (
                any(f" {value} " in t for t in sent_text)
                if kind == "entity"
                else any(value in a for a in sent_anchor)
            )
            if not found and kind == "entity" and " " in value:  # sentence-initial word glued on
                found = any(f" {value.split(' ', 1)[1]} " in t for t in sent_text)
            if not found:
                problems.append(f"{kind} '{value}' is not in the cited sources")

        words = content_stems(claim)
        missing = sorted(words - all_stems)
        coverage = 1.0 - len(missing) / max(1, len(words))
        if coverage < self.min_coverage:
            problems.append(f"words not in the cited sources: {', '.join(missing[:6])}")

        # The best supporting sentence decides polarity.
        best = max(range(len(sentences)), key=lambda i: len(words & sent_stems[i]))
        if negated(claim) != negated(sentences[best]):
            problems.append("contradicts its source: negation differs from the supporting sentence")

        toks = tokens(claim)
        positions = _anchor_positions(toks, claim_anchors)
        for (_, value), pos in zip(claim_anchors, positions, strict=True):
            ctx = _context_stems(toks, pos, self.context)
            holders = [i for i, t in enumerate(sent_text) if f" {value} " in t or value in sent_anchor[i]]
            if (
                ctx
                and holders
                and max(len(ctx & sent_stems[i]) / len(ctx) for i in holders) < self.min_context
            ):
                problems.append(f"'{value}' is attached to words no source sentence uses with it")
        relation = words - {stem(w) for a in claim_anchor_vals for w in a.split()}
        if (
            not relation
            and len(claim_anchor_vals) >= 2
            and not any(
                all(f" {a} " in t or a in sa for a in claim_anchor_vals)
                for t, sa in zip(sent_text, sent_anchor, strict=True)
            )
        ):  # "Lena Marsh is Dmitri Orlov": no relation word, so the anchors must share a sentence
            problems.append("its names and numbers never appear together in one source sentence")
        for i, a in enumerate(claim_anchor_vals):
            for b in claim_anchor_vals[i + 1 :]:
                orders = [
                    (t.find(f" {a} "), t.find(f" {b} "))
                    for t in sent_text
                    if f" {a} " in t and f" {b} " in t and a != b
                ]
                if orders and all(pa > pb for pa, pb in orders):
                    problems.append(f"'{a}' and '{b}' are swapped relative to the source")
        return problems


def _anchor_positions(toks: list[str], claim_anchors: list[tuple[str, str]]) -> list[int]:
    lowered = [stem(t) if is_number(t) else t.lower() for t in toks]
    positions, start = [], 0
    for _, value in claim_anchors:
        first = value.split(" ")[0]
        idx = next((j for j in range(start, len(lowered)) if lowered[j] == first), start)
        positions.append(idx)
        start = idx + 1
    return positions


def _context_stems(toks: list[str], pos: int, n: int) -> set[str]:
    """Up to n content words each side of position pos (skipping capitalized words and numbers)."""
    ctx: set[str] = set()
    for rng in (range(pos - 1, -1, -1), range(pos + 1, len(toks))):
        got = 0
        for j in rng:
            t = toks[j]
            if t.lower() in STOPWORDS or t.lower() in NEGATIONS or t[0].isupper() or is_number(t):
                continue
            ctx.add(stem(t))
            got += 1
            if got >= n:
                break
    return ctx
