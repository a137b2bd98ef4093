"""The one optimizer factory: AdamW or Adagrad, warm-up + cosine / linear / constant schedule,
global-norm clipping, per-parameter learning-rate scales, and any update transformations a
stage appends (pruning masks, which must see the final updates).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import optax

from ecomjax.config import TrainConfig
from ecomjax.errors import InputError
from ecomjax.models.paths import param_path


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """``train.warmup_fraction`` of the planned steps when set, else ``train.warmup_steps``;
    never the whole schedule."""
    steps = max(1, int(config.warmup_fraction * total_steps)) if config.warmup_fraction else config.warmup_steps
    return min(steps, max(total_steps - 1, 0))


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    peak = config.learning_rate
    warmup = warmup_steps(config, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = peak * config.end_learning_rate_ratio
    if config.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_learning_rate_ratio)
    elif config.decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def scale_by_path(scales: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of every parameter whose path (``ecomjax.models.paths``) contains a
    key of ``scales`` by its value (after the optimizer: the same as that multiple of the
    learning rate, weight decay included). A key that matches no parameter, or a parameter
    matched by two keys, is an error: which multiplier applies would be an accident."""

    def multipliers(tree) -> list[float]:
        names = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        unused = [k for k in scales if not any(k in n for n in names)]
        if unused:
            raise InputError(f"train.learning_rate_scales keys {unused} match no trained parameter")
        out = []
        for name in names:
            found = [v for k, v in scales.items() if k in name]
            if len(found) > 1:
                raise InputError(f"parameter {name} matches more than one train.learning_rate_scales key")
            out.append(found[0] if found else 1.0)
        return out

    def init(params):
        multipliers(params)  # fail at initialisation, before any step
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        scaled = [u * m for u, m in zip(leaves, multipliers(updates), strict=True)]
        return jax.tree.unflatten(treedef, scaled), state

    return optax.GradientTransformation(init, update)


def make_optimizer(config: TrainConfig, total_steps: int,
                   after: Sequence[optax.GradientTransformation] = ()
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(transformation, learning-rate schedule)`` for ``total_steps`` planned steps;
    ``after`` runs on the final updates (a pruning mask: pruned weights' updates are -weight)."""
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=config.adam_eps, weight_decay=config.weight_decay))
    else:  # adagrad (EHCF's optimizer): weight decay as an L2 term on the gradients
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        parts.append(optax.adagrad(schedule, initial_accumulator_value=1e-8))
    if config.learning_rate_scales:
        parts.append(scale_by_path(config.learning_rate_scales))
    parts.extend(after)
    return optax.chain(*parts), schedule
