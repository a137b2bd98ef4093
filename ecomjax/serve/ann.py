"""Nearest-neighbour search over product embeddings: exact top-k in JAX and a FAISS HNSW index.

``exact_top_k`` is the reference (a matmul and ``lax.top_k``, chunked over the catalogue so the
score matrix never materialises whole); ``HNSWIndex`` is what serving uses. ``recall_at_k``
compares the two, and the benchmark reports it: an approximate index is only as good as the
fraction of the exact neighbours it finds.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ecomjax.errors import InputError


@partial(jax.jit, static_argnames=("k",))
def _chunk_top_k(queries: jax.Array, chunk: jax.Array, offset: jax.Array, k: int):
    scores, index = jax.lax.top_k(queries @ chunk.T, k)
    return scores, index + offset


def exact_top_k(queries: np.ndarray, products: np.ndarray, k: int, chunk_size: int = 16384
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [Q, k], indices [Q, k])`` by inner product, best first (float32 in JAX)."""
    queries = jnp.asarray(queries, jnp.float32)
    n = len(products)
    if not 1 <= k <= n:
        raise InputError(f"k must be in [1, {n}] (the number of products), got {k}")
    best_s = best_i = None
    for start in range(0, n, chunk_size):
        chunk = np.asarray(products[start:start + chunk_size], np.float32)
        if len(chunk) < chunk_size and n > chunk_size:  # one shape: pad the tail with -inf rows
            chunk = np.concatenate([chunk, np.zeros((chunk_size - len(chunk), chunk.shape[1]), np.float32)])
        width = min(k, len(chunk))
        s, i = _chunk_top_k(queries, jnp.asarray(chunk), jnp.asarray(start), width)
        s = jnp.where(i < n, s, -jnp.inf)
        if best_s is None:
            best_s, best_i = s, i
        else:
            merged_s, merged_i = jnp.concatenate([best_s, s], 1), jnp.concatenate([best_i, i], 1)
            best_s, order = jax.lax.top_k(merged_s, k)
            best_i = jnp.take_along_axis(merged_i, order, axis=1)
    return np.asarray(best_s), np.asarray(best_i)


class HNSWIndex:
    """FAISS HNSW graph over unit vectors (inner product). ``ef_search`` trades recall for time."""

    def __init__(self, vectors: np.ndarray, *, m: int = 32, ef_construction: int = 200, ef_search: int = 128):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or not len(vectors):
            raise InputError(f"HNSWIndex needs a non-empty [N, D] matrix, got shape {vectors.shape}")
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(vectors)
        self.ef_search = ef_search

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, ef_search: int = 128) -> HNSWIndex:
        """An index written by ``save`` (no rebuild: building 45k vectors takes ~20 s here)."""
        import faiss

        index = cls.__new__(cls)
        index.index = faiss.read_index(str(path))
        index.ef_search = ef_search
        return index

    @property
    def size(self) -> int:
        return self.index.ntotal

    @property
    def ef_search(self) -> int:
        return self.index.hnsw.efSearch

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.index.hnsw.efSearch = value

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (ids continue from ``size``); not safe beside a concurrent ``search``."""
        self.index.add(np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ef_search < k:
            raise InputError(f"ef_search ({self.ef_search}) must be >= k ({k}) or HNSW cannot return k results")
        scores, index = self.index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)
        return scores, index


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    if approximate.shape != exact.shape:
        raise InputError(f"shapes differ: {approximate.shape} vs {exact.shape}")
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])
