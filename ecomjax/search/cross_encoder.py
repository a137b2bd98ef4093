"""Cross-encoder: the pretrained encoder over ``[CLS] query [SEP] title [SEP]`` with a regression head.

Query and title attend to each other in every layer, so word-level agreement ("cordless" in the
query, "18-Volt ... Cordless" in the title) is read directly instead of through two pooled
vectors: the most accurate relevance model here and the most expensive (one full encoder pass
per pair, ~70 GFLOPs for 100 candidates), which is why serving uses it only where the latency
budget allows and the GBDT re-ranker otherwise. All encoder weights are fine-tuned; the head
starts at the training mean so the first steps do not spend themselves learning an offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.encoders.text import load_tokenizer
from ecomjax.encoders.weights import resolve_checkpoint
from ecomjax.models.bert import BertModel, load_bert, mean_pool
from ecomjax.tasks.fit import FitConfig, FitResult, fit, map_row_batches


class CrossEncoder(nnx.Module):
    def __init__(self, encoder: BertModel, mean_grade: float, *, rngs: nnx.Rngs):
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.head = nnx.Linear(width, 1, kernel_init=nnx.initializers.normal(0.02),
                               bias_init=nnx.initializers.constant(mean_grade), rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array, types: jax.Array) -> jax.Array:
        hidden = self.encoder(ids, mask, types)
        return self.head(mean_pool(hidden, mask))[..., 0]


@dataclass
class CrossEncoderConfig:
    checkpoint: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: int = 48  # query + title word pieces, [CLS]/[SEP] included; titles truncate first
    fit: FitConfig | None = None


def tokenize_pairs(tokenizer, queries: Sequence[str], titles: Sequence[str], max_length: int
                   ) -> dict[str, np.ndarray]:
    """``ids``, ``mask``, ``types`` ``[n, max_length]`` int32 for (query, title) pairs."""
    encodings = tokenizer.encode_batch(list(zip(queries, titles, strict=True)))
    n = len(encodings)
    out = {name: np.zeros((n, max_length), np.int32) for name in ("ids", "mask", "types")}
    for row, encoding in enumerate(encodings):
        length = min(len(encoding.ids), max_length)
        out["ids"][row, :length] = encoding.ids[:length]
        out["mask"][row, :length] = encoding.attention_mask[:length]
        out["types"][row, :length] = encoding.type_ids[:length]
    return out


def load_cross_encoder(config: CrossEncoderConfig, mean_grade: float, seed: int = 0):
    """``(model, tokenizer)``: pretrained encoder weights, fresh regression head."""
    checkpoint = resolve_checkpoint(config.checkpoint)
    model = CrossEncoder(load_bert(checkpoint), mean_grade, rngs=nnx.Rngs(seed))
    tokenizer = load_tokenizer(checkpoint, config.max_length)
    return model, tokenizer


def _loss(model: CrossEncoder, data: dict, rows: jax.Array, key) -> jax.Array:
    del key  # the converted encoder has no dropout
    predicted = model(data["ids"][rows], data["mask"][rows], data["types"][rows])
    return jnp.mean((predicted - data["relevance"][rows]) ** 2)


@nnx.jit
def _predict(model: CrossEncoder, data: dict, rows: jax.Array) -> jax.Array:
    return model(data["ids"][rows], data["mask"][rows], data["types"][rows])


def predict_pairs(model: CrossEncoder, data: dict, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return map_row_batches(_predict, model, data, rows, batch_size)


def train_cross_encoder(data: dict, train_rows: np.ndarray, valid_rows: np.ndarray, model: CrossEncoder,
                        fit_config: FitConfig, trainable: nnx.filterlib.Filter = nnx.Param) -> FitResult:
    """Fine-tune ``model`` in place on ``data`` (``tokenize_pairs`` + ``relevance``), early-stopped
    on validation RMSE. ``trainable``: every parameter (full fine-tuning), or the adapters and the
    head of a LoRA model (``ecomjax.efficiency.lora``)."""
    relevance = np.asarray(data["relevance"])

    def validate(m: CrossEncoder) -> float:
        predicted = predict_pairs(m, data, valid_rows)
        return -float(np.sqrt(np.mean((predicted - relevance[valid_rows]) ** 2)))

    return fit(model, _loss, data, train_rows, validate, fit_config, trainable=trainable)
