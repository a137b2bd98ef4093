"""Flax NNX models. A model knows nothing about tasks: it maps inputs to representations.

Sequential recommenders share one interface: ``encode(items, positions, segments, *,
deterministic, rngs) -> [B, L, D]`` hidden states, ``item_table() -> [R, D]`` output embeddings
(``R = padded_vocab(num_items + 1)``: row 0 and rows past ``num_items`` are padding, never
scored), ``catalogue_scores(hidden) -> [B, R]`` (inference scores of every row; int8 after
quantization) and a ``num_items`` attribute. Parameters carry logical axis names
(``ecomjax.models.axes``) so any mesh can place them. New model = one module + one line in
``SEQUENTIAL_MODELS``.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from ecomjax.config import ModelConfig
from ecomjax.models.gru4rec import GRU4Rec
from ecomjax.models.sasrec import SASRec

SEQUENTIAL_MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def build_sequential_model(
    config: ModelConfig, num_items: int, max_len: int, *, rngs: nnx.Rngs, item_features: np.ndarray | None = None,
    item_words: np.ndarray | None = None, item_counts: np.ndarray | None = None,
) -> SASRec | GRU4Rec:
    """``item_features``: ``[num_items + 1, D]`` content vectors for ``config.item_fusion != "id"``;
    ``item_words``: ``[num_items + 1, T]`` title-word ids for ``config.title_word_min_items``;
    ``item_counts``: ``[num_items + 1]`` training interactions per item, kept when
    ``config.item_id_min_interactions`` or ``config.item_count_buckets`` asks for them."""
    return SEQUENTIAL_MODELS[config.name](config, num_items, max_len, rngs=rngs, item_features=item_features,
                                          item_words=item_words, item_counts=item_counts)


__all__ = ["SEQUENTIAL_MODELS", "GRU4Rec", "SASRec", "build_sequential_model"]
