"""Leave-one-out evaluation of a sequential recommender, batched over users in one jitted call.

The same compiled function serves validation (early stopping) and test: it encodes each user's
history, scores the whole catalogue, masks padding (and, with ``eval.exclude_history``, every
item the user has interacted with before the target), and returns metric sums. Only the sums
cross to the host, so there is no per-user Python loop.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from ecomjax.eval.ranking import (
    check_finite_rows,
    full_ranking_scores,
    nonfinite_rows,
    rank_metric_sums,
    sampled_rank,
    target_rank,
)


def make_evaluator(graphdef: nnx.GraphDef, ks: tuple[int, ...], exclude_history: bool, sampled: bool):
    """A jitted ``(variables, batch arrays) -> metric sums`` for one model architecture.

    ``variables`` is what ``nnx.merge(graphdef, *variables)`` needs (the model's state, split
    any way). ``exclude_history``: the user's earlier items get -inf before ranking.
    """
    ks = tuple(ks)

    @jax.jit
    def evaluate_batch(variables, items, positions, segments, history, targets, negatives, valid):
        model = nnx.merge(graphdef, *variables)
        hidden = model.encode(items, positions, segments, deterministic=True)[:, -1]
        scores = model.catalogue_scores(hidden)
        ranked = full_ranking_scores(scores, history if exclude_history else None, model.num_items)
        sums = rank_metric_sums(target_rank(ranked, targets), valid, ks)
        sums["nonfinite"] = nonfinite_rows(ranked, valid)
        if sampled:
            sampled_sums = rank_metric_sums(sampled_rank(scores, targets, negatives), valid, ks)
            sums.update({f"sampled/{name}": value for name, value in sampled_sums.items()})
        return sums

    return evaluate_batch


_ORDER = ("items", "positions", "segments", "history", "targets", "negatives", "valid")


def warm_up_evaluator(evaluate_batch, params, batches: list[dict[str, np.ndarray]]) -> None:
    """Compile the evaluator for every batch shape up front, so evaluation timings are execution only."""
    seen = set()
    for batch in batches:
        signature = tuple(batch[name].shape for name in _ORDER)
        if signature not in seen:
            seen.add(signature)
            jax.block_until_ready(evaluate_batch(params, *(batch[name] for name in _ORDER)))


def evaluate_split(
    evaluate_batch, params, batches: list[dict[str, Any]], users: int | None = None
) -> dict[str, Any]:
    """Run ``evaluate_batch`` over every batch (see ``eval_batches``); returns averaged metrics.

    ``users`` is the number of real (``valid``) users; give it when the batches are device arrays
    (possibly spread over processes), so no host needs to read them back.
    """
    totals: dict[str, float] = {}
    pending = []
    for batch in batches:
        pending.append(evaluate_batch(params, *(batch[name] for name in _ORDER)))  # dispatch all first
    for index, sums in enumerate(jax.device_get(pending)):
        check_finite_rows(float(sums.pop("nonfinite")), f"evaluation batch {index} ({len(batches)} batches)")
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    if users is None:
        users = int(sum(np.asarray(batch["valid"]).sum() for batch in batches))
    metrics: dict[str, Any] = {name: value / users for name, value in sorted(totals.items())}
    sampled = {name.split("/", 1)[1]: metrics.pop(name) for name in list(metrics) if name.startswith("sampled/")}
    if sampled:
        metrics["sampled"] = sampled
    metrics["users"] = users
    return metrics
