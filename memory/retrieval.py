"""Hybrid retrieval: dense (MiniLM cosine, via Chroma) + lexical (BM25, via bm25s), fused by RRF.

Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009):

    RRF(d) = sum over lists L containing d of 1 / (k + rank_L(d)),   k = 60, rank from 1

RRF needs no score calibration between cosine and BM25, which is why it is used here. The model
share cap keeps the agent from building answers mostly on its own earlier answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RRF_K", "LexicalIndex", "rrf_fuse", "cap_model_share", "tokenize"]

RRF_K = 60


def tokenize(texts: list[str]) -> list[list[str]]:
    """bm25s tokens (lowercase, English stopwords removed) as strings, so any index can use them."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)  # type: ignore[return-value]


@dataclass
class LexicalIndex:
    """A BM25 index over one namespace's facts; rebuilt when the namespace changes."""

    ids: list[str]
    _retriever: object | None = None

    @classmethod
    def build(cls, ids: list[str], texts: list[str]) -> LexicalIndex:
        import bm25s

        index = cls(ids=list(ids))
        if ids:
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
            index._retriever = retriever
        return index

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> list[str]:
        """Ids of the top-k docs with a positive BM25 score; `mask` (0/1 per doc) filters."""
        if self._retriever is None or not self.ids:
            return []
        tokens = tokenize([query])
        if not tokens[0]:
            return []
        k = min(k, len(self.ids))
        docs, scores = self._retriever.retrieve(  # type: ignore[attr-defined]
            tokens, k=k, show_progress=False, weight_mask=mask, n_threads=1
        )
        return [self.ids[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


def rrf_fuse(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float, list[int | None]]]:
    """Fuse ranked id lists: [(id, rrf score, [rank in each list or None])], best first."""
    scores: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    for li, ranking in enumerate(rankings):
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(doc_id, [None] * len(rankings))[li] = rank
    order = sorted(scores, key=lambda d: (-scores[d], d))
    return [(d, scores[d], ranks[d]) for d in order]


def cap_model_share(ids: list[str], is_model: Callable[[str], bool], k: int, share: float) -> list[str]:
    """First k ids keeping at most floor(share * k) model-written ones (may return fewer than k)."""
    cap = math.floor(share * k + 1e-9)
    out: list[str] = []
    n_model = 0
    for doc_id in ids:
        if len(out) >= k:
            break
        if is_model(doc_id):
            if n_model >= cap:
                continue
            n_model += 1
        out.append(doc_id)
    return out
