"""Relevance-model metrics: RMSE over judged pairs and NDCG@k per query.

NDCG ranks each query's *judged* products by the model's score and uses the human grade as the
gain, shifted so the lowest grade gains nothing (``gain = grade - low``: in Home Depot's [1, 3]
an irrelevant product adds 0, a perfect one 2). Queries with a single judged product rank
trivially and are left out of the mean (their count is reported); ties in the score are broken
against the model (worst grade first), so a constant predictor cannot look good.
"""

from __future__ import annotations

import numpy as np


def rmse(predicted: np.ndarray, grades: np.ndarray) -> float:
    predicted, grades = np.asarray(predicted, np.float64), np.asarray(grades, np.float64)
    if predicted.shape != grades.shape:
        raise ValueError(f"predictions {predicted.shape} and grades {grades.shape} differ in shape")
    if not np.isfinite(predicted).all():
        raise ValueError("predictions contain NaN or infinite values")
    return float(np.sqrt(np.mean((predicted - grades) ** 2)))


def ndcg_at_k(scores: np.ndarray, grades: np.ndarray, k: int = 10) -> float:
    """NDCG@k of one list (``grades`` already shifted to gains >= 0)."""
    order = np.lexsort((grades, -scores))  # by score descending, ties: lower gain first
    gains = grades[order][:k]
    discounts = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    ideal = np.sort(grades)[::-1][:k]
    best = float(np.sum(ideal * discounts[:len(ideal)]))
    return float(np.sum(gains * discounts)) / best if best > 0 else 0.0


def query_ndcg_values(scores: np.ndarray, grades: np.ndarray, query_index: np.ndarray, k: int = 10,
                      low: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(query ids, NDCG@k of each)`` for the queries with at least two judged products and some
    gain, in query-id order (per-query values: for paired comparisons and bootstrap intervals)."""
    scores, gains = np.asarray(scores, np.float64), np.asarray(grades, np.float64) - low
    query_index = np.asarray(query_index)
    ids, values = [], []
    order = np.argsort(query_index, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(query_index[order])) + 1)
    for rows in groups:
        if len(rows) < 2 or gains[rows].max() <= 0:
            continue
        ids.append(query_index[rows[0]])
        values.append(ndcg_at_k(scores[rows], gains[rows], k))
    return np.asarray(ids, dtype=query_index.dtype), np.asarray(values, dtype=np.float64)


def per_query_ndcg(scores: np.ndarray, grades: np.ndarray, query_index: np.ndarray, k: int = 10,
                   low: float = 1.0) -> dict[str, float]:
    """Mean NDCG@k over queries with at least two judged products and some gain."""
    _, values = query_ndcg_values(scores, grades, query_index, k, low)
    return {f"ndcg@{k}": float(np.mean(values)) if len(values) else float("nan"), "queries": len(values)}


def relevance_metrics(scores: np.ndarray, grades: np.ndarray, query_index: np.ndarray,
                      *, regression: bool = True, low: float = 1.0) -> dict[str, float]:
    """RMSE (for models that predict grades; BM25 does not) and per-query NDCG@10."""
    out = per_query_ndcg(scores, grades, query_index, 10, low)
    if regression:
        out["rmse"] = rmse(scores, grades)
    return out
