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
    """A BM25 index over one namespace's facts (bm25s, Lucene variant: k1 1.5, b 0.75).

    `score_extra` scores documents outside the index with the index's own corpus statistics
    (document count, document frequencies, mean length), so facts written after the build can
    join a ranking without rebuilding it.
    """

    ids: list[str]
    _retriever: object | None = None
    avgdl: float = 1.0

    @classmethod
    def build(cls, ids: list[str], texts: list[str]) -> LexicalIndex:
        import bm25s

        index = cls(ids=list(ids))
        if ids:
            retriever = bm25s.BM25()
            tokenized = bm25s.tokenize(texts, stopwords="en", show_progress=False)
            retriever.index(tokenized, show_progress=False)
            index._retriever = retriever
            index.avgdl = max(1.0, sum(len(doc) for doc in tokenized.ids) / len(ids))
        return index

    def score_extra(self, docs: list[list[str]], query: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
        """BM25 score of each tokenized doc (see `tokenize`) for the query, with this index's
        statistics (a term the index never saw counts as in one document)."""
        out = np.zeros(len(docs), dtype=np.float32)
        q = [t for t in tokenize([query])[0] if t]
        if not docs or not q:
            return out
        n = len(self.ids)
        vocab: dict[str, int] = getattr(self._retriever, "vocab_dict", {}) or {}
        indptr = self._retriever.scores["indptr"] if self._retriever is not None else None  # type: ignore[attr-defined]
        for term in set(q):
            t = vocab.get(term)
            df = int(indptr[t + 1] - indptr[t]) if t is not None and indptr is not None else 0
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            for i, doc in enumerate(docs):
                tf = doc.count(term)
                if tf:
                    out[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / self.avgdl))
        return out

    def search_scored(self, query: str, k: int, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        """(id, BM25 score) of the top-k docs with a positive score; `mask` (0/1 per doc) filters."""
        if self._retriever is None or not self.ids:
            return []
        tokens = tokenize([query])
        if not tokens[0]:
            return []
        k = min(k, len(self.ids))
        docs, scores = self._retriever.retrieve(  # type: ignore[attr-defined]
            tokens, k=k, show_progress=False, weight_mask=mask, n_threads=1
        )
        return [(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> list[str]:
        """Ids of the top-k docs with a positive BM25 score; `mask` (0/1 per doc) filters."""
        return [d for d, _ in self.search_scored(query, k, mask)]


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
