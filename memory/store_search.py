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
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from factflow.errors import UserError
from factflow.memory.facts import ScoredFact
from factflow.memory.retrieval import LexicalIndex, cap_model_share, rrf_fuse
from factflow.memory.verify import Neighbor

if TYPE_CHECKING:
    from factflow.memory.store import FactStore

__all__ = ["search", "nearest", "dense_valid", "valid_where", "LexicalCache"]


@dataclass
class LexicalCache:
    """A namespace's BM25 index with each doc's validity interval, keyed by what invalidates it."""

    key: tuple[int, int]
    index: LexicalIndex
    valid_from: np.ndarray
    valid_to: np.ndarray
    pos: dict[str, int]


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


def _lexical(store: FactStore, ns: str) -> LexicalCache:
    col = store.collection(ns)
    key = (int(col.count()), store.write_count(ns))
    cached = store.lexical_caches.get(ns)
    if cached is not None and cached.key == key:
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
    cache = LexicalCache(
        key, LexicalIndex.build(ids, texts), np.array(vf), np.array(vt), {d: i for i, d in enumerate(ids)}
    )
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

    lex = _lexical(store, ns)
    mask = ((lex.valid_from <= at) & (lex.valid_to > at)).astype(np.float32)
    if where:
        allowed = col.get(where=where, include=[])["ids"]
        keep = np.zeros_like(mask)
        keep[[lex.pos[i] for i in allowed if i in lex.pos]] = 1.0
        mask *= keep
    lexical = lex.index.search(query, n_cand, mask=mask)

    fused = rrf_fuse([dense, lexical])
    facts = {f.id: f for f in store.get_many([d for d, _, _ in fused], namespace=ns)}
    origins.update({d: f.origin for d, f in facts.items() if d not in origins})
    when = as_of if as_of is not None else None
    valid = [d for d, _, _ in fused if d in facts and facts[d].is_valid(when)]
    chosen = set(
        cap_model_share(valid, lambda d: origins.get(d) == "model", k, store.settings.model_fact_share)
    )
    return [
        ScoredFact(fact=facts[d], score=s, dense_rank=r[0], lexical_rank=r[1])
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
