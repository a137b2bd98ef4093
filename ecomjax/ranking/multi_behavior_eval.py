"""Data layout, full-catalogue evaluation and rule baselines of the multi-behaviour recommender.

Every user's held-out purchase is ranked against the whole catalogue (EHCF's protocol; see
``ecomjax.ranking.multi_behavior``): scores are ``user_vectors @ item_matrix.T`` in jitted
chunks of users, the user's training purchases excluded, HR / NDCG at each k summed per chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.data.taobao import TARGET_BEHAVIOR, Interactions, MultiBehaviorData
from ecomjax.eval.ranking import rank_metric_sums, target_rank
from ecomjax.models.multi_behavior import MultiBehaviorRecommender

# --- data ------------------------------------------------------------------------------------


def padded_items(pairs: Interactions, num_users: int, pad: int, min_width: int = 1) -> np.ndarray:
    """``[num_users, max items per user]`` int32 item ids of each user, padded with ``pad``."""
    counts = np.bincount(pairs.users, minlength=num_users)
    width = max(int(counts.max(initial=0)), min_width)
    out = np.full((num_users, width), pad, dtype=np.int32)
    order = np.lexsort((pairs.items, pairs.users))
    users, items = pairs.users[order], pairs.items[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[users, np.arange(len(users)) - starts[users]] = items
    return out


@dataclass
class ValidationSplit:
    fit_buy: Interactions  # training purchases minus the held-out ones
    valid: Interactions  # one held-out training purchase per validation user


def split_validation(data: MultiBehaviorData, fraction: float, seed: int) -> ValidationSplit:
    """Hold out one random training purchase of ``fraction`` of the users (those with >= 3)."""
    rng = np.random.default_rng(seed)
    buy = data.train[TARGET_BEHAVIOR]
    order = np.argsort(buy.users, kind="stable")
    buy = Interactions(buy.users[order], buy.items[order])
    counts = np.bincount(buy.users, minlength=data.num_users)
    eligible = np.flatnonzero(counts >= 3)
    if len(eligible) == 0:
        raise ValueError("no user has 3 training purchases to hold one out for validation")
    chosen = np.sort(rng.choice(eligible, size=max(1, round(fraction * len(eligible))), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = starts[chosen] + rng.integers(0, counts[chosen])
    keep = np.ones(len(buy), dtype=bool)
    keep[rows] = False
    return ValidationSplit(Interactions(buy.users[keep], buy.items[keep]),
                           Interactions(buy.users[rows], buy.items[rows]))


# --- evaluation ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("ks",))
def _chunk_metric_sums(user_vectors: jax.Array, item_matrix: jax.Array, targets: jax.Array,
                       exclude: jax.Array, boost_items: jax.Array, boost_values: jax.Array,
                       valid: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    scores = user_vectors @ item_matrix.T
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, boost_items].add(boost_values, mode="drop")  # pad = num_items: dropped
    scores = scores.at[rows, exclude].set(-jnp.inf, mode="drop")
    return rank_metric_sums(target_rank(scores, targets), valid, ks)


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
        raise ValueError("no targets to evaluate")
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
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {key: value / num for key, value in sums.items() if key.split("@")[0] in ("hr", "ndcg")}


@nnx.jit
def _user_vectors_chunk(model: MultiBehaviorRecommender, users: jax.Array,
                        history: jax.Array | None) -> jax.Array:
    if history is None:
        return model.user_vectors(users)
    rows = jnp.broadcast_to(jnp.arange(users.shape[0])[:, None], history.shape)
    return model.user_vectors(users, (rows.reshape(-1), history.reshape(-1)))


def all_user_vectors(model: MultiBehaviorRecommender, users: np.ndarray,
                     history: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """``p_u`` of ``users`` (``history``: ``[num_users, H]`` padded training items, row = user id)."""
    out = []
    size = min(batch_size, len(users))
    for start in range(0, len(users), size):
        chunk = users[start:start + size]
        count = len(chunk)
        chunk = np.pad(chunk, (0, size - count))  # one compiled shape
        hist = jnp.asarray(history[chunk]) if (model.use_history and history is not None) else None
        out.append(np.asarray(_user_vectors_chunk(model, jnp.asarray(chunk), hist))[:count])
    return np.concatenate(out)


def evaluate_model(model: MultiBehaviorRecommender, targets: Interactions, exclude: np.ndarray,
                   history: np.ndarray | None, ks: tuple[int, ...], batch_size: int,
                   auxiliary: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Full-ranking purchase metrics of ``targets``.

    ``exclude``, ``history`` and ``auxiliary[name]`` are padded item lists indexed by user id: the
    items ranked out, the training items (``use_history``) and each auxiliary behaviour's items
    (``interaction_bonus``).
    """
    vectors = all_user_vectors(model, targets.users, history)
    boost = None
    if model.interaction_bonus is not None and auxiliary:
        bonus = np.asarray(model.bonus())
        items = [auxiliary[name][targets.users] for name in model.auxiliary]
        values = [np.full(i.shape, bonus[a], np.float32) for a, i in enumerate(items)]
        boost = (np.concatenate(items, axis=1), np.concatenate(values, axis=1))
    return full_ranking_metrics(vectors, model.item_matrix(TARGET_BEHAVIOR), targets.items,
                                exclude[targets.users], ks, batch_size, boost)


def popularity_scores(buy: Interactions, num_items: int) -> np.ndarray:
    """Purchase counts as a one-dimensional item matrix ``[num_items, 1]`` (user vector = 1)."""
    return np.bincount(buy.items, minlength=num_items).astype(np.float32)[:, None]


def popularity_metrics(buy: Interactions, targets: Interactions, exclude: np.ndarray, num_items: int,
                       ks: tuple[int, ...], batch_size: int,
                       first: np.ndarray | None = None) -> dict[str, float]:
    """Rank by purchase count; ``first`` (``[len(targets), M]`` padded items, row per target)
    are put above every other item, in purchase-count order among themselves."""
    counts = popularity_scores(buy, num_items)
    boost = None
    if first is not None:
        boost = (first, np.full(first.shape, counts.max() + 1.0, np.float32))
    return full_ranking_metrics(np.ones((len(targets), 1), np.float32), counts, targets.items,
                                exclude, ks, batch_size, boost)
