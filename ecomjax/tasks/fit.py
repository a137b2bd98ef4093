"""Early-stopped training of small NNX models on in-memory features (fusion heads, towers).

The catalogue tasks train heads over frozen encoder outputs: the whole feature set fits on the
device, batches are row indices, and an epoch takes seconds. What matters is that every model in
an ablation is trained and selected the same way: AdamW with warm-up and cosine decay, the
validation score checked after every epoch, the best epoch's parameters kept, training stopped
after ``patience`` epochs without improvement, and a NaN loss reported instead of trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@dataclass
class FitConfig:
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # of all planned steps
    patience: int = 5  # epochs without a better validation score before stopping
    seed: int = 0
    # {path substring: multiplier} on the learning rate of matching parameters, e.g. LoRA+
    # ({"_lora_b": 16}: the zero-initialised B matrices learn 16x faster than A, Hayou et al. 2024)
    learning_rate_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        bad = {k: v for k, v in self.learning_rate_scales.items() if not v > 0}
        if bad:
            raise ValueError(f"learning_rate_scales must be > 0, got {bad}")


def scale_by_path(scales: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of every parameter whose path contains a key of ``scales`` by its
    value (after AdamW: the same as that multiple of the learning rate, weight decay included).
    A parameter matched by two keys is an error: which multiplier applies would be an accident."""
    def multiplier(path) -> float:
        name = jax.tree_util.keystr(path)
        found = [v for k, v in scales.items() if k in name]
        if len(found) > 1:
            raise ValueError(f"parameter {name} matches more than one learning_rate_scales key")
        return found[0] if found else 1.0

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda p, u: u * multiplier(p), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled full batches of ``rows`` (the remainder joins the next epoch's shuffle: one shape,
    one compilation)."""
    order = rng.permutation(rows)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


def fit(model: nnx.Module, loss_fn: Callable[..., jax.Array], data: Any, train_rows: np.ndarray,
        evaluate: Callable[[nnx.Module], float], config: FitConfig,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        trainable: nnx.filterlib.Filter = nnx.Param) -> FitResult:
    """Train ``model`` in place, leaving it at its best validation epoch.

    ``loss_fn(model, data, rows, key) -> scalar`` computes the training loss of one batch of
    row indices (dropout from ``key``). ``data`` (device arrays or an NNX module holding them) is
    passed into the compiled step as an argument: captured in a closure, hundreds of MB of
    features would be baked into the program as constants. ``evaluate(model) -> float`` is the
    validation score (higher is better); ``on_epoch(record)`` sees each epoch's record as it
    ends (progress logs). ``trainable`` selects the variables trained (default every
    ``nnx.Param``; LoRA: ``ecomjax.efficiency.lora.lora_trainable("head")``): the rest get no
    gradient and no optimizer state. Fewer rows than one batch is an error.
    """
    if len(train_rows) < config.batch_size:
        raise ValueError(f"{len(train_rows)} training rows are fewer than one batch of "
                         f"{config.batch_size}")
    steps = config.epochs * (len(train_rows) // config.batch_size)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(1, int(config.warmup_fraction * steps)), max(steps, 2),
        end_value=0.05 * config.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=config.weight_decay),
                     *([scale_by_path(config.learning_rate_scales)] if config.learning_rate_scales else []))
    optimizer = nnx.Optimizer(model, tx, wrt=trainable)
    if config.learning_rate_scales:
        names = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(nnx.state(model, trainable))[0]]
        unused = [k for k in config.learning_rate_scales if not any(k in n for n in names)]
        if unused:
            raise ValueError(f"learning_rate_scales keys {unused} match no trained parameter")

    @nnx.jit
    def step(model, optimizer, data, rows, key):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model, data, rows, key)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    best_state: Any = None
    result = FitResult(best_epoch=0, best_score=-np.inf, epochs_run=0, seconds=0.0)
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        losses = []
        for rows in epoch_batches(train_rows, config.batch_size, rng):
            key, sub = jax.random.split(key)
            losses.append(step(model, optimizer, data, jnp.asarray(rows), sub))
        loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} in epoch {epoch}; lower the "
                                     "learning rate or check the features for NaN")
        score = float(evaluate(model))
        if not np.isfinite(score):
            raise FloatingPointError(f"validation score is {score} after epoch {epoch}")
        result.history.append({"epoch": epoch, "loss": loss, "valid": score})
        if on_epoch is not None:
            on_epoch(result.history[-1])
        result.epochs_run = epoch
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            best_state = jax.tree.map(jnp.copy, nnx.state(model, trainable))
        elif epoch - result.best_epoch >= config.patience:
            break
    nnx.update(model, best_state)
    result.seconds = time.perf_counter() - start
    return result


def map_row_batches(fn: Callable[..., Any], model: nnx.Module, data: Any, rows: np.ndarray,
                    batch_size: int = 512) -> Any:
    """``fn(model, data, batch_rows)`` over ``rows`` in fixed-size batches (the last padded with
    row 0 and cut back: one compilation), outputs (any pytree of arrays) joined along rows."""
    outputs = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)])
        real = len(chunk)
        outputs.append(jax.tree.map(lambda x, real=real: np.asarray(x)[:real],
                                    fn(model, data, jnp.asarray(padded))))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
