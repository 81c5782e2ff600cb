"""Novelty and contradiction checks of the write-back gate against stored neighbours.

Pure logic over `Neighbor`s (nearest stored facts, found by `FactStore`): a claim that restates
a stored fact adds nothing; a claim that disagrees with a stored sentence about the same thing
is flagged, never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factflow.memory.verify_text import anchors, content_stems, negated, split_sentences, stem

__all__ = ["Neighbor", "restatement_of", "find_contradictions"]


@dataclass
class Neighbor:
    """A stored fact near the claim: id, text and cosine similarity."""

    id: str
    text: str
    cosine: float


def restatement_of(claim: str, neighbors: Sequence[Neighbor]) -> str | None:
    """Id of a stored fact the claim restates: same content words (Jaccard >= 0.8), or all its
    content words inside one sentence of the fact (per sentence, so restating one sentence of a
    multi-sentence chunk adds nothing either; a sentence made self-contained, "The Nimbus sensor
    of Acme ..." from "... The Nimbus sensor ...", does add the link)."""
    words = content_stems(claim)
    if not words:
        return None
    for n in neighbors:
        other = content_stems(n.text)
        if not other:
            continue
        if len(words & other) / len(words | other) >= 0.8:
            return n.id
        if any(words <= content_stems(s) for s in split_sentences(n.text)):
            return n.id
    return None


def find_contradictions(claim: str, neighbors: Sequence[Neighbor]) -> list[str]:
    """Ids of stored facts with a sentence about the same thing that disagrees on a number, a
    named entity or polarity. Same thing = >= 2 shared non-anchor content words covering >= 60%
    of the claim's (one suffices when they also share an anchor), and, when both name entities,
    at least one entity in common (two towers of different heights don't disagree)."""
    claim_anchor = anchors(claim)
    c_nums = {a for k, a in claim_anchor if k == "number"}
    c_ents = {a for k, a in claim_anchor if k == "entity"}
    anchor_words = {stem(w) for a in c_nums | c_ents for w in a.split()}
    words = content_stems(claim) - anchor_words
    out: list[str] = []
    for n in neighbors:
        for sentence in split_sentences(n.text):
            s_anchor = anchors(sentence)
            s_nums = {a for k, a in s_anchor if k == "number"}
            s_ents = {a for k, a in s_anchor if k == "entity"}
            s_words = content_stems(sentence) - {stem(w) for a in s_nums | s_ents for w in a.split()}
            if c_ents and s_ents and not c_ents & s_ents:
                continue  # different subjects: different numbers are no disagreement
            shared = words & s_words
            shared_anchor = (c_nums & s_nums) or (c_ents & s_ents)
            if len(shared) < (1 if shared_anchor else 2) or len(shared) < 0.6 * len(words):
                continue
            differs = bool((c_nums - s_nums) and (s_nums - c_nums)) or bool(
                shared_anchor and (c_ents - s_ents) and (s_ents - c_ents)
            )
            if differs or (shared_anchor and negated(claim) != negated(sentence)):
                out.append(n.id)
                break
    return out
