"""Metrics of a pointwise ranker: AUC, per-user GAUC, log loss, calibration, list NDCG.

Computed in float64 numpy on the host: they run once per evaluation over a few hundred thousand
impressions, and exactness (ties, empty groups) matters more than speed here. Each one has a
definition that papers disagree on, so the choice is written down:

* ``auc``: Mann-Whitney with average ranks for ties (equal to ``sklearn.metrics.roc_auc_score``).
* ``gauc``: DIN's group AUC: the AUC inside each group (user), averaged with weights = the
  group's impressions, over groups that have both a positive and a negative (others have no
  AUC and are counted in ``groups_used``).
* ``log_loss``: mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7].
* ``calibration``: ``sum(p) / sum(y) - 1`` (0 = calibrated on average; +0.1 = 10% over-predicted)
  and ``ece``: the expected calibration error over equal-mass bins of the prediction.

NDCG of ranked lists and RMSE are ``ecomjax.eval.graded``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ecomjax.errors import InputError, NonFiniteError

_EPS = 1e-7


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise InputError(f"{scores.shape[0]} scores for {labels.shape[0]} labels")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise NonFiniteError(f"{bad.size} scores are NaN or infinite (first at row {bad[0]}): the model's "
                             "parameters are not finite; not scored")
    return scores, labels.astype(np.float64)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    scores, labels = _check(scores, labels)
    positives = labels > 0.5
    n_pos = int(positives.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUC, and how many groups had both classes."""
    scores, labels = _check(scores, labels)
    groups = np.asarray(groups).reshape(-1)
    order = np.argsort(groups, kind="stable")
    scores, labels, groups = scores[order], labels[order], groups[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    total = weight = 0.0
    used = 0
    for start, end in zip(starts, ends, strict=True):
        value = auc(scores[start:end], labels[start:end])
        if np.isnan(value):
            continue
        total += value * (end - start)
        weight += end - start
        used += 1
    return (total / weight if weight else float("nan")), used


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p, y = _check(probabilities, labels)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Relative bias of the predicted rate: ``sum(p) / sum(y) - 1``."""
    p, y = _check(probabilities, labels)
    if y.sum() == 0:
        return float("nan")
    return float(p.sum() / y.sum() - 1.0)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 20) -> float:
    """Mean |predicted - observed rate| over ``bins`` equal-mass bins of the prediction, weighted
    by bin size. Equal-mass bins: CTRs sit near 0, where equal-width bins would hold nearly all
    impressions in the first one."""
    p, y = _check(probabilities, labels)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    error = 0.0
    for part in np.array_split(order, min(bins, len(p))):
        error += abs(p[part].mean() - y[part].mean()) * len(part)
    return float(error / len(p))
