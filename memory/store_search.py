"""Search in the fact store: dense (Chroma HNSW) + lexical (BM25) candidates, RRF-fused.

`search` returns the facts valid at a time (now by default), at most `model_fact_share` of them
model-written. `nearest` is the gate's novelty/contradiction lookup; both use one dense query
helper (`dense_valid`) that asks Chroma unfiltered first, because a Chroma `where` makes HNSW
search pre-filter every record: 455 ms vs 16 ms unfiltered at 30k facts. Validity rarely
removes a hit, so invalid hits are dropped here and the filtered query only runs when too few
valid ones are left (or the caller filters on metadata).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from factflow.errors import UserError
from factflow.memory.facts import Fact, ScoredFact
from factflow.memory.retrieval import LexicalIndex, cap_model_share, rrf_fuse, tokenize
from factflow.memory.store_chroma import OPEN_END
from factflow.memory.verify import Neighbor

if TYPE_CHECKING:
    from factflow.memory.store import FactStore

__all__ = ["search", "nearest", "dense_valid", "valid_where", "LexicalCache", "lexical"]


class LexicalCache:
    """A namespace's BM25 ranking that follows writes without a rebuild.

    The bm25s index is built once from the whole namespace (17 s at 100k facts); facts written
    later by this store go into a small delta, scored with the index's statistics
    (`LexicalIndex.score_extra`) and merged by score, and invalidations only change the validity
    arrays. The index is rebuilt when the delta outgrows `max(2000, 20%)` of it, or when the
    collection's count says another process wrote (its writes are not seen one by one).
    """

    def __init__(
        self, ids: list[str], texts: list[str], valid_from: list[float], valid_to: list[float]
    ) -> None:
        self.index = LexicalIndex.build(ids, texts)
        self.valid_from = np.array(valid_from, dtype=np.float64)
        self.valid_to = np.array(valid_to, dtype=np.float64)
        self.pos = {d: i for i, d in enumerate(ids)}
        self.count = len(ids)  # the collection count this cache reflects
        self.delta: dict[str, tuple[list[str], float, float]] = {}  # id -> (tokens, from, to)

    @property
    def stale(self) -> bool:
        return len(self.delta) > max(2000, len(self.pos) // 5)

    def add(self, facts: list[Fact]) -> None:
        """Facts just upserted: new ids join the delta, a rewritten one leaves the index."""
        toks = tokenize([f.text for f in facts])
        for f, tokens in zip(facts, toks, strict=True):
            if f.id in self.pos:
                self.valid_to[self.pos.pop(f.id)] = -np.inf  # its old text must not match any more
            elif f.id not in self.delta:
                self.count += 1
            end = f.valid_to.timestamp() if f.valid_to else OPEN_END
            self.delta[f.id] = (tokens, f.valid_from.timestamp(), end)

    def end(self, ids: Sequence[str], at: float) -> None:
        """Facts invalidated at `at`."""
        for d in ids:
            if d in self.pos:
                self.valid_to[self.pos[d]] = at
            elif d in self.delta:
                tokens, start, _ = self.delta[d]
                self.delta[d] = (tokens, start, at)

    def remove(self, ids: Sequence[str]) -> None:
        """Facts deleted."""
        for d in ids:
            if d in self.pos:
                self.valid_to[self.pos.pop(d)] = -np.inf
                self.count -= 1
            elif self.delta.pop(d, None) is not None:
                self.count -= 1

    def search(self, query: str, n: int, at: float, allowed: set[str] | None) -> list[str]:
        """Ids of the n best BM25 matches valid at `at` (and in `allowed` when given)."""
        mask = ((self.valid_from <= at) & (self.valid_to > at)).astype(np.float32)
        if allowed is not None:
            keep = np.zeros_like(mask)
            keep[[self.pos[i] for i in allowed if i in self.pos]] = 1.0
            mask *= keep
        hits = self.index.search_scored(query, n, mask=mask)
        extra = [
            (d, tokens)
            for d, (tokens, start, stop) in self.delta.items()
            if start <= at < stop and (allowed is None or d in allowed)
        ]
        if extra:
            scores = self.index.score_extra([t for _, t in extra], query)
            hits += [(d, float(sc)) for (d, _), sc in zip(extra, scores, strict=True) if sc > 0]
            hits.sort(key=lambda h: -h[1])
        return [d for d, _ in hits[:n]]


def valid_where(where: dict[str, Any] | None, at: float) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"valid_to": {"$gt": at}}, {"valid_from": {"$lte": at}}]
    if where:
        clauses.append(where)
    return {"$and": clauses}


def dense_valid(
    col: Any,
    embeddings: Any,
    n_cand: int,
    *,
    at: float,
    where: dict[str, Any] | None = None,
    include: tuple[str, ...] = ("metadatas",),
) -> list[list[tuple[str, dict[str, Any], str, float]]]:
    """Per query embedding: up to n_cand (id, metadata, document, cosine) of facts valid at `at`.

    Unfiltered query first (2 * n_cand hits, invalid ones dropped); a query short of n_cand
    valid hits, and any metadata-filtered query, runs again with the validity filter.
    """
    count = int(col.count())
    if count == 0 or len(embeddings) == 0:
        return [[] for _ in range(len(embeddings))]
    fields = sorted({"metadatas", "distances", *include})

    def query(embs: Any, flt: dict[str, Any] | None, n: int) -> Any:
        try:
            return col.query(query_embeddings=embs, n_results=min(n, count), where=flt, include=fields)
        except Exception as exc:
            if where:
                msg = f"bad metadata filter {where!r} ({exc}): use Chroma where syntax"
                raise UserError(msg) from None
            raise

    def rows(res: Any, q: int) -> list[tuple[str, dict[str, Any], str, float]]:
        docs = res["documents"][q] if res.get("documents") else [""] * len(res["ids"][q])
        return [
            (i, m, d, 1.0 - float(dist))
            for i, m, d, dist in zip(
                res["ids"][q], res["metadatas"][q], docs, res["distances"][q], strict=True
            )
            if m["valid_from"] <= at < m["valid_to"]
        ]

    out: list[list[tuple[str, dict[str, Any], str, float]]] = [[] for _ in range(len(embeddings))]
    redo = list(range(len(embeddings)))
    if not where:
        res = query(embeddings, None, 2 * n_cand)
        redo = []
        for q in range(len(embeddings)):
            out[q] = rows(res, q)[:n_cand]
            if len(out[q]) < min(n_cand, count) and len(res["ids"][q]) > len(out[q]):
                redo.append(q)
    if redo:
        res = query(np.asarray(embeddings)[redo], valid_where(where, at), n_cand)
        for j, q in enumerate(redo):
            out[q] = rows(res, j)
    return out


def lexical(store: FactStore, ns: str) -> LexicalCache:
    """The namespace's lexical cache, built (or rebuilt) when it is missing, stale, or the
    collection's count shows writes this store didn't make."""
    col = store.collection(ns)
    cached = store.lexical_caches.get(ns)
    if cached is not None and not cached.stale and cached.count == int(col.count()):
        return cached
    ids: list[str] = []
    texts: list[str] = []
    vf: list[float] = []
    vt: list[float] = []
    offset = 0
    while True:
        res = col.get(limit=5000, offset=offset, include=["documents", "metadatas"])
        if not res["ids"]:
            break
        ids += res["ids"]
        texts += res["documents"]
        vf += [m["valid_from"] for m in res["metadatas"]]
        vt += [m["valid_to"] for m in res["metadatas"]]
        offset += len(res["ids"])
    cache = LexicalCache(ids, texts, vf, vt)
    store.lexical_caches[ns] = cache
    return cache


def search(
    store: FactStore,
    query: str,
    *,
    k: int = 5,
    namespace: str | None = None,
    where: dict[str, Any] | None = None,
    as_of: datetime | None = None,
) -> list[ScoredFact]:
    """Hybrid search over the facts of one namespace valid at `as_of` (default now)."""
    ns = store.namespace_of(namespace)
    if not isinstance(query, str) or not query.strip():
        raise UserError("the search query is empty: pass some words to search for")
    if not 1 <= k <= 100:
        raise UserError(f"k={k} is out of range: use 1..100")
    col = store.collection(ns)
    n = int(col.count())
    if n == 0:
        return []
    at = as_of.timestamp() if as_of is not None else time.time()
    n_cand = min(n, max(4 * k, 20))
    hits = dense_valid(col, store.embed([query]), n_cand, at=at, where=where)[0]
    dense = [i for i, _, _, _ in hits]
    origins = {i: m["origin"] for i, m, _, _ in hits}
    cosines = {i: cos for i, _, _, cos in hits}

    allowed = set(col.get(where=where, include=[])["ids"]) if where else None
    lexical_ids = lexical(store, ns).search(query, n_cand, at, allowed)

    fused = rrf_fuse([dense, lexical_ids])
    facts = {f.id: f for f in store.get_many([d for d, _, _ in fused], namespace=ns)}
    origins.update({d: f.origin for d, f in facts.items() if d not in origins})
    when = as_of if as_of is not None else None
    valid = [d for d, _, _ in fused if d in facts and facts[d].is_valid(when)]
    chosen = set(
        cap_model_share(valid, lambda d: origins.get(d) == "model", k, store.settings.model_fact_share)
    )
    return [
        ScoredFact(fact=facts[d], score=s, dense_rank=r[0], lexical_rank=r[1], similarity=cosines.get(d))
        for d, s, r in fused
        if d in chosen
    ]


def nearest(store: FactStore, texts: list[str], namespace: str, n: int = 5) -> list[list[Neighbor]]:
    """The n stored facts valid now nearest to each text (the gate's novelty/contradiction lookup)."""
    col = store.collection(namespace)
    if not texts:
        return []
    got = dense_valid(col, store.embed(texts), n, at=time.time(), include=("documents",))
    return [[Neighbor(i, d, cos) for i, _, d, cos in hits] for hits in got]
