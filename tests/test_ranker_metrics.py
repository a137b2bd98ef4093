"""Ranker metrics against scikit-learn and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from ecomjax.errors import NonFiniteError
from ecomjax.eval import classification as cls


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=500).astype(float)  # many ties
    labels = (rng.random(500) < 0.3).astype(float)
    assert cls.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(cls.auc(scores, np.zeros(500)))


def test_gauc_is_impression_weighted_mean_over_users_with_both_classes():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 20, size=400)
    scores = rng.random(400)
    labels = (rng.random(400) < scores * 0.6).astype(float)
    labels[users == 3] = 0  # a user with only negatives is left out
    total = weight = 0.0
    used = 0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        total += roc_auc_score(labels[m], scores[m]) * m.sum()
        weight += m.sum()
        used += 1
    value, n = cls.gauc(scores, labels, users)
    assert value == pytest.approx(total / weight, abs=1e-12)
    assert n == used and n < 20


def test_log_loss_and_calibration():
    rng = np.random.default_rng(2)
    p = rng.random(300) * 0.98 + 0.01
    y = (rng.random(300) < p).astype(float)
    assert cls.log_loss(p, y) == pytest.approx(sk_log_loss(y, p), abs=1e-12)
    assert cls.calibration(np.full(4, 0.5), np.array([1, 0, 0, 0])) == pytest.approx(1.0)  # 2 predicted, 1 seen
    assert cls.expected_calibration_error(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 1]), bins=2) == pytest.approx(0.1)


def test_bad_metric_input_is_named():
    with pytest.raises(NonFiniteError, match=r"NaN or infinite \(first at row 1\)"):
        cls.auc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        cls.log_loss(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
