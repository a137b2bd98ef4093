"""GRU4Rec (Hidasi et al., 2016) with a GRU or LSTM cell, trained on every position.

The recurrence restarts wherever the segment id changes, so packed rows of several users and
left-padded evaluation rows run through the same scan. Input projections of all time steps
are one batched matmul; only the small recurrent matmul sits inside ``lax.scan``. Item
embeddings are shared with the output layer, as in SASRec, so both models are scored alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.models.axes import logical_init
from ecomjax.models.item_embedding import ItemEmbedding, item_count_options

if TYPE_CHECKING:
    from ecomjax.models.sequential import SequentialModelConfig

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


class RecurrentLayer(nnx.Module):
    """One GRU or LSTM layer over ``[B, L, D]`` with resets at segment starts."""

    def __init__(self, cell: str, width: int, dtype: jnp.dtype, *, rngs: nnx.Rngs):
        self.cell = cell
        gates = 3 if cell == "gru" else 4
        self.input_proj = nnx.Linear(
            width, gates * width, dtype=dtype,
            kernel_init=logical_init(nnx.initializers.lecun_normal(), "embed", "gates"),
            bias_init=logical_init(nnx.initializers.zeros_init(), "gates"), rngs=rngs,
        )
        self.recurrent = nnx.Param(
            nnx.initializers.orthogonal()(rngs.params(), (width, gates * width)), logical_axes=("embed", "gates")
        )
        self.recurrent_bias = nnx.Param(jnp.zeros((gates * width,)), logical_axes=("gates",))

    def __call__(self, x: jax.Array, resets: jax.Array) -> jax.Array:
        batch, _, width = x.shape
        projected = jnp.swapaxes(self.input_proj(x), 0, 1)  # [L, B, G*D]
        resets = jnp.swapaxes(resets, 0, 1)[..., None]  # [L, B, 1]
        w_h = self.recurrent[...].astype(x.dtype)
        b_h = self.recurrent_bias[...].astype(x.dtype)
        zeros = jnp.zeros((batch, width), x.dtype)

        if self.cell == "gru":

            def step(h, inputs):
                gx, reset = inputs
                h = jnp.where(reset, 0, h)
                gh = h @ w_h + b_h
                r = jax.nn.sigmoid(gx[:, :width] + gh[:, :width])
                z = jax.nn.sigmoid(gx[:, width : 2 * width] + gh[:, width : 2 * width])
                n = jnp.tanh(gx[:, 2 * width :] + r * gh[:, 2 * width :])
                h = (1 - z) * n + z * h
                return h, h

            _, outputs = jax.lax.scan(step, zeros, (projected, resets))
        else:

            def step(carry, inputs):
                h, c = carry
                gx, reset = inputs
                h, c = jnp.where(reset, 0, h), jnp.where(reset, 0, c)
                g = gx + h @ w_h + b_h
                i, f, o = (jax.nn.sigmoid(g[:, k * width : (k + 1) * width]) for k in range(3))
                c = f * c + i * jnp.tanh(g[:, 3 * width :])
                h = o * jnp.tanh(c)
                return (h, c), h

            _, outputs = jax.lax.scan(step, (zeros, zeros), (projected, resets))
        return jnp.swapaxes(outputs, 0, 1)


class GRU4Rec(nnx.Module):
    """Embedding -> dropout -> stacked GRU/LSTM -> dropout; ``encode`` as in SASRec."""

    def __init__(self, config: SequentialModelConfig, num_items: int, max_len: int, *, rngs: nnx.Rngs,
                 item_features: np.ndarray | None = None, item_words: np.ndarray | None = None,
                 item_counts: np.ndarray | None = None):
        del max_len  # recurrent models need no position table
        self.dtype = jnp.dtype(config.compute_dtype)
        self.num_items = num_items
        width = config.hidden_size
        self.item_embedding = ItemEmbedding(num_items, width, fusion=config.item_fusion, features=item_features,
                                            id_init=config.item_id_init, id_dropout=config.item_id_dropout,
                                            text_adapter_size=config.text_adapter_size,
                                            words=item_words, **item_count_options(config, item_counts),
                                            rngs=rngs)
        self.layers = nnx.List(
            [RecurrentLayer(config.rnn_cell, width, self.dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.dropout = nnx.Dropout(config.dropout)

    def item_table(self, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
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
        del positions
        previous = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
        resets = segments != previous
        x = self.dropout(self.item_embedding(items, deterministic=deterministic, rngs=rngs), deterministic=deterministic, rngs=rngs)
        x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer(x, resets)
        return self.dropout(x, deterministic=deterministic, rngs=rngs)
