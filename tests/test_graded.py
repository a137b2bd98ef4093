"""The one graded-NDCG implementation (search, ranker lists, retrieval) and RMSE, against hand
values and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from ecomjax.errors import NonFiniteError
from ecomjax.eval.graded import grouped_ndcg, mean_grouped_ndcg, ndcg_rows, relevance_metrics, rmse


def _one(scores, gains, k=10) -> float:
    return float(ndcg_rows(np.array([scores], float), np.array([gains], float), k)[0])


def test_ndcg_by_hand_and_ties_count_against_the_model():
    gains = [2.0, 0.0, 1.0]
    assert _one([3.0, 1.0, 2.0], gains) == pytest.approx(1.0)  # ranked gains 2, 1, 0: ideal
    worst = _one([1.0, 3.0, 2.0], gains)  # gains 0, 1, 2
    assert worst == pytest.approx((1 / np.log2(3) + 2 / np.log2(4)) / (2 + 1 / np.log2(3)))
    assert _one([0.0, 0.0, 0.0], gains) == pytest.approx(worst)  # a constant scorer: the worst order
    assert np.isnan(_one([1.0, 2.0], [0.0, 0.0]))  # nothing to rank


def test_grouped_ndcg_skips_short_and_gainless_lists_and_names_bad_input():
    ids, values = grouped_ndcg(np.array([0.0, 1.0, 5.0, 3.0, 2.0, 1.0]), np.array([2.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
                               np.array([7, 7, 1, 1, 4, 9]), min_size=2)
    # group 4 has one row, group 9 no gain; group 7 ranks the gain-0 row first
    assert ids.tolist() == [1, 7] and values == pytest.approx([1.0, 1 / np.log2(3)])
    assert mean_grouped_ndcg(np.zeros(2), np.zeros(2), np.array([0, 0]))[1] == 0
    with pytest.raises(NonFiniteError, match="scores: 1 values are NaN"):
        grouped_ndcg(np.array([np.nan, 1.0]), np.array([1.0, 0.0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="gains must be >= 0"):
        grouped_ndcg(np.array([0.0, 1.0]), np.array([-1.0, 0.0]), np.array([0, 0]))


def test_grouped_ndcg_matches_sklearn_per_list():
    rng = np.random.default_rng(3)
    lists = np.repeat(np.arange(30), 12)
    scores = rng.random(len(lists))  # continuous: no ties, where sklearn's tie rule differs
    gains = rng.random(len(lists)) * (rng.random(len(lists)) < 0.4)
    expected = [ndcg_score(gains[lists == g][None], scores[lists == g][None], k=10)
                for g in range(30) if gains[lists == g].sum() > 0]
    value, counted = mean_grouped_ndcg(scores, gains, lists, k=10)
    assert counted == len(expected) and value == pytest.approx(np.mean(expected), abs=1e-12)
    rows = ndcg_rows(scores.reshape(30, 12), gains.reshape(30, 12), k=10)
    assert np.nanmean(rows) == pytest.approx(np.mean(expected), abs=1e-12)


def test_relevance_metrics_shift_grades_and_rmse():
    # query 0: two judged products ranked right; query 1: a single product, left out
    result = relevance_metrics(np.array([1.0, 0.0, 5.0]), np.array([3.0, 1.0, 2.0]), np.array([0, 0, 1]))
    assert result["ndcg@10"] == pytest.approx(1.0) and result["queries"] == 1
    assert result["rmse"] == pytest.approx(np.sqrt((4 + 1 + 9) / 3))
    assert "rmse" not in relevance_metrics(np.ones(2), np.array([1.0, 2.0]), np.array([0, 0]), regression=False)
    assert rmse(np.array([1.0, 2.0]), np.array([2.0, 2.0])) == pytest.approx(np.sqrt(0.5))
    with pytest.raises(NonFiniteError, match="predictions: 1 values are NaN"):
        rmse(np.array([np.nan]), np.array([1.0]))
