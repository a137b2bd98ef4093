"""Ranking metrics against a brute-force numpy reference (sorting each row)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ecomjax.eval.ranking import full_ranking_scores, rank_metric_sums, sampled_rank, target_rank

KS = (1, 5, 10)


def reference_metrics(scores, targets, ks, exclude=None):
    """Sort every row (ties placed before the target) and read off the target's position."""
    totals = {}
    for u in range(len(targets)):
        row = scores[u].astype(np.float64).copy()
        row[0] = -np.inf
        for item in (exclude[u] if exclude is not None else ()):
            row[item] = -np.inf
        t = targets[u]
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == t))
        rank = order.index(t)
        for k in ks:
            hit = rank < k
            totals[f"hr@{k}"] = totals.get(f"hr@{k}", 0.0) + hit
            totals[f"ndcg@{k}"] = totals.get(f"ndcg@{k}", 0.0) + hit / np.log2(rank + 2)
            totals[f"mrr@{k}"] = totals.get(f"mrr@{k}", 0.0) + hit / (rank + 1)
        totals["mrr"] = totals.get("mrr", 0.0) + 1 / (rank + 1)
    return {k: v / len(targets) for k, v in totals.items()}


def jax_metrics(scores, targets, history=None, valid=None):
    valid = np.ones(len(targets), bool) if valid is None else valid
    ranked = full_ranking_scores(jnp.asarray(scores), None if history is None else jnp.asarray(history))
    sums = rank_metric_sums(target_rank(ranked, jnp.asarray(targets)), jnp.asarray(valid), KS)
    return {k: float(v) / valid.sum() for k, v in sums.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_matches_bruteforce_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(64, 40)).astype(np.float32)  # many ties on purpose
    targets = rng.integers(1, 40, size=64)
    ours, ref = jax_metrics(scores, targets), reference_metrics(scores, targets, KS)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_history_exclusion_and_padding_match_bruteforce():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(32, 30)).astype(np.float32)
    targets = rng.integers(1, 30, size=32)
    history = np.zeros((32, 6), dtype=np.int32)
    exclude = []
    for u in range(32):
        items = rng.choice([i for i in range(1, 30) if i != targets[u]], size=rng.integers(0, 7), replace=False)
        history[u, : len(items)] = items
        exclude.append(set(items.tolist()))
    ours, ref = jax_metrics(scores, targets, history), reference_metrics(scores, targets, KS, exclude)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    # Exclusion can only move the target up.
    plain = jax_metrics(scores, targets)
    assert ours["mrr"] > plain["mrr"]


def test_padded_users_do_not_count():
    scores = np.array([[0, 3, 2, 1], [0, 1, 2, 3], [0, 9, 9, 9]], np.float32)
    targets = np.array([1, 1, 1])
    valid = np.array([True, True, False])
    m = jax_metrics(scores, targets, valid=valid)
    # User 0 ranks its target first, user 1 third (0-based rank 2).
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_constant_scores_rank_last():
    m = jax_metrics(np.ones((2, 11), np.float32), np.array([3, 7]))
    assert m["hr@5"] == 0.0 and m["mrr"] == pytest.approx(1 / 10)


def test_padding_column_never_outranks_target():
    scores = np.array([[100.0, 1.0, 0.5]], np.float32)
    assert jax_metrics(scores, np.array([1]))["hr@1"] == 1.0


def test_sampled_rank_counts_only_candidates():
    scores = jnp.asarray([[0, 5, 1, 2, 9, 4]], jnp.float32)
    # target 3 (score 2) vs negatives {1 (5), 2 (1), 5 (4)}: two negatives score higher.
    assert int(sampled_rank(scores, jnp.asarray([3]), jnp.asarray([[1, 2, 5]]))[0]) == 2


def test_table_padding_columns_are_never_ranked():
    """Columns past num_items (rows added to shard the item table) get -inf, however they score."""
    scores = jnp.asarray([[0.0, 1.0, 3.0, 2.0, 9.0, 9.0]])  # ids 0..3 real (3 items), 4..5 padding
    ranked = full_ranking_scores(scores, None, num_items=3)
    assert np.isneginf(np.asarray(ranked)[0, [0, 4, 5]]).all()
    assert int(target_rank(ranked, jnp.asarray([2]))[0]) == 0
    assert int(target_rank(full_ranking_scores(scores, None), jnp.asarray([2]))[0]) == 2  # unmasked: padding wins
