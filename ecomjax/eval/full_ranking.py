"""Full-catalogue ranking of one held-out target per row, for factorised scorers.

A row's scores are ``user_vectors[n] @ item_matrix.T`` (any model that factorises: matrix
factorisation, the multi-behaviour recommender, popularity as a one-dimensional matrix), plus
an optional sparse boost at given items, with given items excluded (-inf) last; HR@k and NDCG@k
of the target are summed per chunk of rows in one jitted call each, so memory stays ``chunk x
items``. Ties count against the target (``ecomjax.eval.ranking.target_rank``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ecomjax.errors import InputError
from ecomjax.eval.ranking import check_finite_rows, nonfinite_rows, rank_metric_sums, target_rank


@functools.partial(jax.jit, static_argnames=("ks",))
def _chunk_metric_sums(user_vectors: jax.Array, item_matrix: jax.Array, targets: jax.Array,
                       exclude: jax.Array, boost_items: jax.Array, boost_values: jax.Array,
                       valid: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    scores = user_vectors @ item_matrix.T
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, boost_items].add(boost_values, mode="drop")  # pad = num_items: dropped
    scores = scores.at[rows, exclude].set(-jnp.inf, mode="drop")
    return {**rank_metric_sums(target_rank(scores, targets), valid, ks), "nonfinite": nonfinite_rows(scores, valid)}


def full_ranking_metrics(user_vectors: np.ndarray | jax.Array, item_matrix: np.ndarray | jax.Array,
                         targets: np.ndarray, exclude: np.ndarray, ks: tuple[int, ...] = (5, 10, 20),
                         batch_size: int = 1024,
                         boost: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """HR@k / NDCG@k of one target per row, ranked over all ``item_matrix`` rows.

    Row ``n`` scores ``user_vectors[n] @ item_matrix.T``, plus ``boost = (items, values)``
    (``[n, M]`` each) added at those items; ``exclude[n]`` lists items set to -inf last. Item
    lists are padded with any id >= the item count. Chunked over rows so memory stays
    ``batch_size x items``; the last chunk is padded, so one compilation serves every chunk.
    """
    num = len(targets)
    if num == 0:
        raise InputError("no targets to evaluate")
    ks = tuple(sorted(set(ks)))
    item_matrix = jnp.asarray(item_matrix, jnp.float32)
    if boost is None:
        boost = (np.full((num, 1), item_matrix.shape[0], np.int32), np.zeros((num, 1), np.float32))
    arrays = [np.asarray(user_vectors, np.float32), np.asarray(targets, np.int32),
              np.asarray(exclude, np.int32), np.asarray(boost[0], np.int32),
              np.asarray(boost[1], np.float32)]
    size = min(batch_size, num)
    sums: dict[str, float] = {}
    for start in range(0, num, size):
        stop = min(start + size, num)
        pad = size - (stop - start)
        vectors, *rest = [jnp.asarray(np.pad(a[start:stop], [(0, pad)] + [(0, 0)] * (a.ndim - 1)))
                          for a in arrays]
        valid = jnp.asarray(np.arange(size) < stop - start)
        out = _chunk_metric_sums(vectors, item_matrix, *rest, valid, ks)
        check_finite_rows(float(out.pop("nonfinite")), f"evaluation rows {start}-{stop - 1}")
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {key: value / num for key, value in sums.items() if key.split("@")[0] in ("hr", "ndcg")}
