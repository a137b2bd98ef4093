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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


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
                     optax.adamw(schedule, weight_decay=config.weight_decay))
    optimizer = nnx.Optimizer(model, tx, wrt=trainable)

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
