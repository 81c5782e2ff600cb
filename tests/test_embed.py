"""The embedder's recent-text cache returns exactly what the model encodes (real MiniLM)."""

from __future__ import annotations

import numpy as np

from factflow.memory import embed as embed_module
from factflow.memory.embed import get_embedder


def test_cached_vectors_equal_fresh_encodes_in_order_with_repeats() -> None:
    embedder = get_embedder()
    texts = ["The capital of Zorbia is Quillmar.", "Drums are loud.", "The capital of Zorbia is Quillmar."]
    direct = embedder._model.encode(texts, normalize_embeddings=True)
    first = embedder.embed(texts)
    again = embedder.embed(texts[::-1])  # now every text comes from the cache
    np.testing.assert_allclose(first, direct, atol=1e-6)
    np.testing.assert_allclose(again, direct[::-1], atol=1e-6)
    again[0] += 1.0  # a caller writing into its result must not change the cache
    np.testing.assert_allclose(embedder.embed(texts[:1]), direct[:1], atol=1e-6)


def test_bulk_batches_bypass_the_cache_and_keep_it_bounded() -> None:
    embedder = get_embedder()
    bulk = [f"fact number {i} about place {i % 7}" for i in range(embed_module._RECENT_TEXTS + 10)]
    vectors = embedder.embed(bulk)
    assert vectors.shape == (len(bulk), embedder.dim)
    last = embedder._model.encode(bulk[-1:], normalize_embeddings=True)[0]
    np.testing.assert_allclose(vectors[-1], last, atol=1e-6)
    assert len(embedder._recent) <= embed_module._RECENT_TEXTS
