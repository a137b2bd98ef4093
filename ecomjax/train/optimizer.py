"""AdamW with linear warm-up and cosine / linear decay over the planned number of steps."""

from __future__ import annotations

import optax

from ecomjax.config import TrainConfig


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    peak = config.learning_rate
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
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


def make_optimizer(config: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=config.adam_eps, weight_decay=config.weight_decay))
    return optax.chain(*parts), schedule
