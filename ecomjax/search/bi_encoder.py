"""Bi-encoder: query and product towers on the pretrained sentence encoder, trained on relevance.

Each tower is the MiniLM sentence embedding (computed once per text and cached) followed by a
residual MLP adapter: ``normalize(x + W2 gelu(W1 x))``. With ``W2`` started at zero the towers
start as exactly the pretrained encoder, so training can only move away from a strong retrieval
model when the relevance labels say so. Two losses are mixed:

- regression: ``relevance ~ a * cos(q, p) + b`` (MSE), so the cosine is a calibrated score;
- in-batch softmax over (query, product) pairs graded >= ``positive_grade``: the other products
  of the batch are the negatives, which is what makes the product embeddings usable for
  nearest-neighbour retrieval over the whole catalogue (a regression loss alone sees only the
  few judged products of each query, all of them plausible results).

Fine-tuning the encoder itself would likely do better, but every step would then run MiniLM
forward and backward over each query and title instead of a small MLP over cached vectors (the
whole adapter training takes ~20 s here; one cross-encoder epoch ~16 min); on two CPU cores the
adapters are what fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.models.bert import l2_normalize
from ecomjax.tasks.fit import FitConfig, FitResult, fit, map_row_batches

_ZEROS = nnx.initializers.zeros_init()


class ResidualAdapter(nnx.Module):
    """``normalize(x + W2 gelu(W1 x))``; identity on unit vectors at initialisation."""

    def __init__(self, width: int, hidden: int, dropout: float, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, kernel_init=_ZEROS, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.dropout(jax.nn.gelu(self.up(x)), deterministic=deterministic, rngs=rngs)
        return l2_normalize(x + self.down(h))


class BiEncoder(nnx.Module):
    """Query tower, product tower and the affine map from cosine to a relevance grade."""

    def __init__(self, width: int, hidden: int = 512, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.query_tower = ResidualAdapter(width, hidden, dropout, rngs=rngs)
        self.product_tower = ResidualAdapter(width, hidden, dropout, rngs=rngs)
        self.slope = nnx.Param(jnp.asarray(2.0))
        self.offset = nnx.Param(jnp.asarray(1.5))
        self.log_temperature = nnx.Param(jnp.log(jnp.asarray(0.05)))

    def embed_queries(self, x, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return self.query_tower(x, deterministic=deterministic, rngs=rngs)

    def embed_products(self, x, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return self.product_tower(x, deterministic=deterministic, rngs=rngs)

    def grade(self, cosine: jax.Array) -> jax.Array:
        return self.slope[...] * cosine + self.offset[...]


@dataclass
class BiEncoderConfig:
    hidden: int = 512
    dropout: float = 0.1
    contrastive_weight: float = 0.5  # 0: regression only
    positive_grade: float = 2.5  # pairs at or above this grade are in-batch softmax positives
    fit: FitConfig | None = None
    # distillation from a cross-encoder (data["teacher"]: its predicted grade per pair row): the
    # regression loss becomes (1 - w) * MSE(grade) + w * MSE(teacher); the same gradient as
    # regressing on the mixed target (1 - w) * grade + w * teacher, which is how it is computed
    distill_weight: float = 0.0


def bi_encoder_loss(config: BiEncoderConfig):
    def loss_fn(model: BiEncoder, data: dict, rows: jax.Array, key) -> jax.Array:
        rngs = nnx.Rngs(dropout=key)
        q = model.embed_queries(data["query_vectors"][data["query_index"][rows]], deterministic=False, rngs=rngs)
        p = model.embed_products(data["product_vectors"][data["product_index"][rows]], deterministic=False, rngs=rngs)
        relevance = data["relevance"][rows]
        target = relevance
        if config.distill_weight:
            target = (1.0 - config.distill_weight) * relevance + config.distill_weight * data["teacher"][rows]
        regression = jnp.mean((model.grade(jnp.sum(q * p, axis=-1)) - target) ** 2)
        if not config.contrastive_weight:
            return regression
        logits = (q @ p.T) / jnp.exp(model.log_temperature[...])
        same_query = data["query_index"][rows][:, None] == data["query_index"][rows][None, :]
        same_product = data["product_index"][rows][:, None] == data["product_index"][rows][None, :]
        diagonal = jnp.eye(len(rows), dtype=bool)
        # another row of the same query, or the same product again, is not a negative
        logits = jnp.where((same_query | same_product) & ~diagonal, -1e9, logits)
        positive = relevance >= config.positive_grade
        per_row = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
        contrastive = jnp.sum(jnp.where(positive, per_row, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
        return regression + config.contrastive_weight * contrastive
    return loss_fn


@nnx.jit
def _predict(model: BiEncoder, data: dict, rows: jax.Array) -> jax.Array:
    q = model.embed_queries(data["query_vectors"][data["query_index"][rows]])
    p = model.embed_products(data["product_vectors"][data["product_index"][rows]])
    return model.grade(jnp.sum(q * p, axis=-1))


def predict_pairs(model: BiEncoder, data: dict, rows: np.ndarray) -> np.ndarray:
    """Predicted relevance grade of each pair row."""
    return map_row_batches(_predict, model, data, rows)


def train_bi_encoder(data: dict, train_rows: np.ndarray, valid_rows: np.ndarray,
                     config: BiEncoderConfig, seed: int = 0) -> tuple[BiEncoder, FitResult]:
    """``data``: ``query_vectors [Q, D]``, ``product_vectors [P, D]`` (frozen encoder outputs),
    ``query_index``/``product_index``/``relevance`` per pair row (+ ``teacher`` scores to distil
    from, with ``config.distill_weight``). Early-stopped on validation RMSE against the labels."""
    if config.distill_weight and "teacher" not in data:
        raise ValueError("bi-encoder distill_weight > 0 needs data['teacher']: the teacher's score per pair row")
    width = data["query_vectors"].shape[1]
    model = BiEncoder(width, config.hidden, config.dropout, rngs=nnx.Rngs(seed))
    relevance = np.asarray(data["relevance"])

    def validate(m: BiEncoder) -> float:
        predicted = predict_pairs(m, data, valid_rows)
        return -float(np.sqrt(np.mean((predicted - relevance[valid_rows]) ** 2)))

    result = fit(model, bi_encoder_loss(config), data, train_rows, validate, config.fit or FitConfig())
    return model, result
