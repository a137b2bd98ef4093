"""SASRec (Kang & McAuley, 2018): a causal transformer over a user's item sequence.

Item embeddings are shared with the output layer, so the score of item ``j`` after position
``t`` is ``<h_t, E_j>``. Positions are learned and counted from the *end* of each sequence
(0 = most recent item); this equals the original left-padded layout, and lets packed rows hold
several users: attention is causal and restricted to equal segment ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError
from ecomjax.models.axes import logical_init
from ecomjax.models.item_embedding import ItemEmbedding, item_count_options
from ecomjax.models.layers import TRUNCATED_NORMAL, FeedForward, dense, layer_norm

if TYPE_CHECKING:
    from ecomjax.models.sequential import SequentialModelConfig

_INIT = TRUNCATED_NORMAL


def _linear(d_in: int, d_out: int, axes: tuple[str, str], dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return dense(d_in, d_out, axes, dtype=dtype, rngs=rngs)


def _layer_norm(width: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return layer_norm(width, epsilon=epsilon, rngs=rngs)


def segment_causal_mask(segments: jax.Array) -> jax.Array:
    """``[B, 1, L, L]`` mask: query t may attend key s <= t of the same segment."""
    length = segments.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


class CausalSelfAttention(nnx.Module):
    def __init__(self, config: SequentialModelConfig, dtype: jnp.dtype, *, rngs: nnx.Rngs):
        width = config.hidden_size
        if width % config.num_heads:
            raise InputError(
                f"model.hidden_size={width} must be divisible by model.num_heads={config.num_heads}"
            )
        self.num_heads = config.num_heads
        self.head_dim = width // config.num_heads  # kept when heads are pruned away (``shrink_pruned``)
        self.qkv = _linear(width, 3 * width, ("embed", "heads"), dtype, rngs)
        self.out = _linear(width, width, ("heads", "embed"), dtype, rngs)
        self.dropout = nnx.Dropout(config.attention_dropout)

    def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        batch, length, _ = x.shape
        head = self.head_dim
        q, k, v = jnp.split(self.qkv(x).reshape(batch, length, 3 * self.num_heads, head), 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask, logits / jnp.sqrt(head).astype(jnp.float32), -1e30)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = self.dropout(weights, deterministic=deterministic, rngs=rngs).astype(x.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, self.num_heads * head)
        return self.out(context)


class TransformerBlock(nnx.Module):
    """Pre-LN (``norm_first``) or post-LN (BERT/RecBole) residual block."""

    def __init__(self, config: SequentialModelConfig, dtype: jnp.dtype, *, rngs: nnx.Rngs):
        self.norm_first = config.norm_first
        self.attention = CausalSelfAttention(config, dtype, rngs=rngs)
        self.feed_forward = FeedForward(config.hidden_size, config.ffn_size, config.hidden_size, config.dropout,
                                        activation=config.activation, dtype=dtype, rngs=rngs)
        epsilon = 1e-6 if config.norm_first else 1e-12
        self.attention_norm = _layer_norm(config.hidden_size, epsilon, rngs)
        self.ffn_norm = _layer_norm(config.hidden_size, epsilon, rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        def drop(y):
            return self.dropout(y, deterministic=deterministic, rngs=rngs)

        if self.norm_first:
            x = x + drop(self.attention(self.attention_norm(x).astype(x.dtype), mask, deterministic=deterministic, rngs=rngs))
            return x + drop(self.feed_forward(self.ffn_norm(x).astype(x.dtype), deterministic=deterministic, rngs=rngs))
        x = self.attention_norm(x + drop(self.attention(x, mask, deterministic=deterministic, rngs=rngs)))
        return self.ffn_norm(x + drop(self.feed_forward(x, deterministic=deterministic, rngs=rngs)))


class SASRec(nnx.Module):
    """Causal transformer recommender; ``encode`` gives one hidden state per input position."""

    def __init__(self, config: SequentialModelConfig, num_items: int, max_len: int, *, rngs: nnx.Rngs,
                 item_features: np.ndarray | None = None, item_words: np.ndarray | None = None,
                 item_counts: np.ndarray | None = None):
        self.dtype = jnp.dtype(config.compute_dtype)
        self.num_items = num_items
        width = config.hidden_size
        self.item_embedding = ItemEmbedding(num_items, width, fusion=config.item_fusion, features=item_features,
                                            id_init=config.item_id_init, id_dropout=config.item_id_dropout,
                                            text_adapter_size=config.text_adapter_size,
                                            words=item_words, **item_count_options(config, item_counts),
                                            rngs=rngs)
        self.position_embedding = nnx.Embed(max_len, width, embedding_init=logical_init(_INIT, "positions", "embed"),
                                            rngs=rngs)
        self.embedding_norm = None if config.norm_first else _layer_norm(width, 1e-12, rngs)
        self.final_norm = _layer_norm(width, 1e-6, rngs) if config.norm_first else None
        self.dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([TransformerBlock(config, self.dtype, rngs=rngs) for _ in range(config.num_layers)])

    def item_table(self, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``[padded_vocab(num_items + 1), D]`` output embeddings; only rows 1..num_items are items
        (row 0 is padding; the rows past ``num_items`` only make the table divide over devices)."""
        return self.item_embedding.table(deterministic=deterministic, rngs=rngs)

    def catalogue_scores(self, hidden: jax.Array) -> jax.Array:
        """``hidden [B, D] -> [B, R]`` float32 scores of every item-table row (inference)."""
        return self.item_embedding.scores(hidden)

    def encode(
        self,
        items: jax.Array,
        positions: jax.Array,
        segments: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        x = self.item_embedding(items, deterministic=deterministic, rngs=rngs) + self.position_embedding(positions)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs).astype(self.dtype)
        mask = segment_causal_mask(segments)
        for block in self.blocks:
            x = block(x, mask, deterministic=deterministic, rngs=rngs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x.astype(self.dtype)
