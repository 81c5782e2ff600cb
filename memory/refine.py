"""Grow-and-refine (ACE section 3.2): embedding de-duplication and harmful-bullet pruning.

De-duplication is incremental: each new or changed bullet is compared against an in-memory matrix
of the other bullets of its section, one mat-vec per bullet,

    dup(b) = argmax_{c != b, section(c) = section(b)} cos(e_b, e_c)   if that cosine >= threshold

so a delta of k bullets costs O(k * n * d), never the O(n^2) all-pairs pass. A duplicate pair
becomes a MERGE op (older id kept, counters summed); only a bullet whose harmful count dominates
overwhelmingly (harmful >= min_harmful, default 10, and harmful > 4 * helpful) becomes a REMOVE op
with its reason logged. Both go through the
ordinary apply path, so they land in the op log like any other change.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from factflow.memory.bullets import Bullet, MergeOp, PlaybookState, RemoveOp, parse_bullet_id

__all__ = ["TextEmbedder", "VectorIndex", "dedup_ops", "prune_ops"]


class TextEmbedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


class VectorIndex:
    """Bullet id -> unit vector, stored in one growable matrix with free-slot reuse."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._mat = np.zeros((64, dim), dtype=np.float32)
        self._live = np.zeros(64, dtype=bool)
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = [None] * 64
        self._section: list[str] = [""] * 64
        self._content: dict[str, str] = {}
        self._free: list[int] = list(range(63, -1, -1))

    def __len__(self) -> int:
        return len(self._slot)

    def has(self, bullet: Bullet) -> bool:
        return self._content.get(bullet.id) == bullet.content

    def vector(self, bullet_id: str) -> np.ndarray | None:
        slot = self._slot.get(bullet_id)
        return None if slot is None else self._mat[slot]

    def put(self, bullet_id: str, section: str, content: str, vec: np.ndarray) -> None:
        slot = self._slot.get(bullet_id)
        if slot is None:
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._slot[bullet_id] = slot
        self._mat[slot] = vec
        self._live[slot] = True
        self._ids[slot] = bullet_id
        self._section[slot] = section
        self._content[bullet_id] = content

    def remove(self, bullet_id: str) -> None:
        slot = self._slot.pop(bullet_id, None)
        if slot is not None:
            self._live[slot] = False
            self._ids[slot] = None
            self._content.pop(bullet_id, None)
            self._free.append(slot)

    def _grow(self) -> None:
        n = len(self._mat)
        self._mat = np.concatenate([self._mat, np.zeros((n, self.dim), dtype=np.float32)])
        self._live = np.concatenate([self._live, np.zeros(n, dtype=bool)])
        self._ids.extend([None] * n)
        self._section.extend([""] * n)
        self._free.extend(range(2 * n - 1, n - 1, -1))

    def sync(self, state: PlaybookState, embedder: TextEmbedder) -> list[tuple[str, str, np.ndarray]]:
        """Embed bullets that are new or changed, drop vectors of gone bullets; returns the new rows."""
        for bullet_id in [i for i in self._slot if i not in state.bullets]:
            self.remove(bullet_id)
        for b in state.bullets.values():  # a section change needs no new vector, only a new label
            slot = self._slot.get(b.id)
            if slot is not None:
                self._section[slot] = b.section
        todo = [b for b in state.bullets.values() if not self.has(b)]
        if not todo:
            return []
        vecs = embedder.embed([b.content for b in todo])
        rows = []
        for b, v in zip(todo, vecs, strict=True):
            self.put(b.id, b.section, b.content, v)
            rows.append((b.id, b.content, v))
        return rows

    def scores(self, query: np.ndarray) -> dict[str, float]:
        """Cosine of `query` with every live bullet."""
        sims = self._mat @ query
        return {i: float(sims[s]) for i, s in self._slot.items()}

    def nearest(self, bullet_id: str, section: str) -> tuple[str, float] | None:
        """Most similar other live bullet of the same section."""
        slot = self._slot[bullet_id]
        sims = self._mat @ self._mat[slot]
        mask = self._live.copy()
        mask[slot] = False
        same = np.fromiter((s == section for s in self._section), dtype=bool, count=len(self._section))
        mask &= same
        if not mask.any():
            return None
        sims = np.where(mask, sims, -np.inf)
        best = int(np.argmax(sims))
        other = self._ids[best]
        return None if other is None else (other, float(sims[best]))


def _age(bullet_id: str) -> int:
    parsed = parse_bullet_id(bullet_id)
    return parsed[1] if parsed else 0


def dedup_ops(state: PlaybookState, index: VectorIndex, ids: list[str], threshold: float) -> list[MergeOp]:
    """MERGE ops for the given (new or changed) bullets that duplicate another bullet."""
    ops: list[MergeOp] = []
    gone: set[str] = set()
    for bullet_id in ids:
        b = state.bullets.get(bullet_id)
        if b is None or bullet_id in gone or index.vector(bullet_id) is None:
            continue
        hit = index.nearest(bullet_id, b.section)
        if hit is None or hit[1] < threshold or hit[0] in gone:
            continue
        other = state.bullets[hit[0]]
        keep, drop = sorted((b, other), key=lambda x: _age(x.id))
        # keep the wording that has earned more trust; ties keep the older text
        content = drop.content if (drop.helpful - drop.harmful) > (keep.helpful - keep.harmful) else None
        ops.append(MergeOp(ids=[keep.id, drop.id], content=content))
        gone.add(drop.id)
        index.remove(drop.id)  # later ids in this pass must not merge into a bullet already merged
    return ops


def prune_ops(state: PlaybookState, min_harmful: int, ids: list[str] | None = None) -> list[RemoveOp]:
    """REMOVE ops for bullets the tags condemn overwhelmingly: harmful >= `min_harmful` and
    harmful > 4 * helpful. A few "harmful" tags from a small model are noise, so the default bar
    (10) is high; ordinary removal is the Curator's decision. Each op carries its reason."""
    pool = state.bullets.values() if ids is None else (state.bullets[i] for i in ids if i in state.bullets)
    return [
        RemoveOp(id=b.id, reason=f"prune: harmful {b.harmful} >= {min_harmful} and > 4 x helpful {b.helpful}")
        for b in pool
        if b.harmful >= min_harmful and b.harmful > 4 * b.helpful
    ]
