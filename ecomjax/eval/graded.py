"""Graded relevance metrics: NDCG@k of ranked lists with real-valued gains, and RMSE of grades.

One implementation for every task that ranks judged lists: search queries (Home Depot grades),
the satisfaction ranker's request lists (expected or observed satisfaction) and attribute-query
product retrieval (``2^grade - 1`` gains over the whole held-out pool). The choices papers
disagree on are made once, here:

* **ties count against the model**: items with equal scores are ordered worst gain first, so a
  constant scorer earns the NDCG of the worst ordering, never a lucky one;
* the ideal DCG is that of the gains sorted in decreasing order, cut at ``k``;
* a list whose ideal DCG is 0 has nothing to rank and is left out of the mean (the callers
  report how many lists were counted); so is a list shorter than ``min_size``.
"""

from __future__ import annotations

import numpy as np

from ecomjax.errors import InputError, NonFiniteError


def _finite(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values))
        raise NonFiniteError(f"{name}: {bad.size} values are NaN or infinite (first at row {bad[0]}); not scored")
    return values


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_rows(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each row of ``[Q, N]`` scores against ``[Q, N]`` gains >= 0; NaN where a row's
    ideal DCG is 0."""
    scores, gains = _finite("scores", scores), _finite("gains", gains)
    if scores.shape != gains.shape or scores.ndim != 2:
        raise InputError(f"scores {scores.shape} and gains {gains.shape} must be the same [lists, items]")
    if (gains < 0).any():
        raise InputError("gains must be >= 0")
    k = min(k, scores.shape[1])
    order = np.lexsort((gains, -scores), axis=-1)[:, :k]  # by score, ties: lower gain first
    discounts = _discounts(k)
    dcg = np.take_along_axis(gains, order, axis=1) @ discounts
    ideal = -np.sort(-gains, axis=1)[:, :k] @ discounts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / ideal, np.nan)


def grouped_ndcg(scores: np.ndarray, gains: np.ndarray, groups: np.ndarray, k: int = 10,
                 min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(group ids, NDCG@k of each)`` for the groups (rows sharing a ``groups`` id) with at
    least ``min_size`` rows and some gain, in group-id order: per-list values, for means,
    paired comparisons and bootstrap intervals."""
    scores, gains = _finite("scores", scores).reshape(-1), _finite("gains", gains).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not scores.shape == gains.shape == groups.shape:
        raise InputError(f"{len(scores)} scores, {len(gains)} gains and {len(groups)} group ids differ in length")
    if (gains < 0).any():
        raise InputError("gains must be >= 0")
    order = np.lexsort((gains, -scores, groups))  # by group, then score, ties: lower gain first
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    ends = np.r_[starts[1:], len(order)]
    discounts = _discounts(k)
    ids, values = [], []
    for start, end in zip(starts, ends, strict=True):
        if end - start < min_size:
            continue
        ranked = gains[order[start:end]]
        ideal = np.sort(ranked)[::-1][:k]
        best = float(ideal @ discounts[:len(ideal)])
        if best <= 0:
            continue
        ids.append(sorted_groups[start])
        values.append(float(ranked[:k] @ discounts[:min(k, len(ranked))]) / best)
    return np.asarray(ids, dtype=groups.dtype), np.asarray(values, dtype=np.float64)


def mean_grouped_ndcg(scores: np.ndarray, gains: np.ndarray, groups: np.ndarray, k: int = 10,
                      min_size: int = 1) -> tuple[float, int]:
    """``(mean NDCG@k over the counted groups, how many were counted)``; NaN when none was."""
    _, values = grouped_ndcg(scores, gains, groups, k, min_size)
    return (float(values.mean()) if len(values) else float("nan")), len(values)


def rmse(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error; NaN predictions are an error, an empty input gives NaN."""
    predicted, targets = _finite("predictions", predicted), np.asarray(targets, np.float64)
    if predicted.shape != targets.shape:
        raise InputError(f"predictions {predicted.shape} and targets {targets.shape} differ in shape")
    return float(np.sqrt(np.mean((predicted - targets) ** 2))) if predicted.size else float("nan")


def relevance_metrics(scores: np.ndarray, grades: np.ndarray, query_index: np.ndarray,
                      *, regression: bool = True, low: float = 1.0, k: int = 10) -> dict[str, float]:
    """Search relevance: per-query NDCG@k over each query's judged products (gain = grade -
    ``low``, so the lowest grade gains nothing; queries with one judged product rank trivially
    and are left out) and, for models that predict grades, RMSE."""
    ndcg, queries = mean_grouped_ndcg(scores, np.asarray(grades, np.float64) - low, query_index, k, min_size=2)
    out = {f"ndcg@{k}": ndcg, "queries": queries}
    if regression:
        out["rmse"] = rmse(scores, grades)
    return out


def retrieval_metrics(scores: np.ndarray, grades: np.ndarray, k: int = 10) -> dict[str, float]:
    """Ranking a whole pool for every query (``[Q, N]`` scores and integer grades 0-2): mean
    NDCG@k with gains ``2^grade - 1`` and recall@k of the grade-2 products, capped (hits over
    ``min(relevant, k)``, so a query with 300 relevant products can still reach 1). A query
    with no grade-2 product in the pool is an error: it cannot be scored."""
    relevant = (grades == 2).sum(1)
    if not (relevant > 0).all():
        raise InputError(f"{int((relevant == 0).sum())} queries have no relevant product in the pool")
    gains = 2.0 ** grades - 1
    top = np.lexsort((gains, -scores), axis=-1)[:, :k]  # the tie rule of ndcg_rows
    hits = (np.take_along_axis(grades, top, axis=1) == 2).sum(1)
    return {f"ndcg@{k}": float(np.mean(ndcg_rows(scores, gains, k))),
            f"recall@{k}": float(np.mean(hits / np.minimum(relevant, k)))}
