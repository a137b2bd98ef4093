"""Two-tower and pair models: query and product towers, their bi-encoder on frozen sentence
vectors, and the cross-encoder over ``[CLS] query [SEP] title [SEP]``.

* ``TwoTower`` (attribute-query product retrieval): a query tower over the query's sentence
  embedding and a ``FusionHead`` product tower over the title tokens and the photo, both ending
  L2-normalised in one space; a learned temperature scales their dot product.
* ``BiEncoder`` (search relevance): query and product towers are residual MLP adapters on frozen
  MiniLM sentence vectors, ``normalize(x + W2 gelu(W1 x))`` with ``W2`` started at zero, so the
  towers start as exactly the pretrained encoder and only move where the labels say so; an
  affine map turns their cosine into a relevance grade.
* ``CrossEncoder``: the pretrained BERT over the pair with a regression head started at the
  training mean: query and title attend to each other in every layer, the most accurate
  relevance model and the most expensive (one encoder pass per pair).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ecomjax.models.bert import BertModel, l2_normalize, mean_pool
from ecomjax.models.fusion import FusionConfig, FusionHead
from ecomjax.models.layers import FeedForward, dense, layer_norm

_ZEROS = nnx.initializers.zeros_init()


class QueryTower(nnx.Module):
    def __init__(self, query_dim: int, fusion: FusionConfig, *, rngs: nnx.Rngs):
        self.norm = layer_norm(query_dim, rngs=rngs)
        self.mlp = FeedForward(query_dim, fusion.mlp_size, fusion.output_dim, fusion.dropout,
                               dtype=jnp.dtype(fusion.compute_dtype), rngs=rngs)

    def __call__(self, queries: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        return self.mlp(self.norm(queries), deterministic=deterministic, rngs=rngs).astype(jnp.float32)


class TwoTower(nnx.Module):
    def __init__(self, query_dim: int, fusion: FusionConfig, *, rngs: nnx.Rngs,
                 temperature: float = 0.05):
        self.query = QueryTower(query_dim, fusion, rngs=rngs)
        self.product = FusionHead(fusion, rngs=rngs)
        self.log_scale = nnx.Param(jnp.log(jnp.float32(1.0 / temperature)))

    def embed_queries(self, queries, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return l2_normalize(self.query(queries, deterministic=deterministic, rngs=rngs))

    def embed_products(self, text, mask, image, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return l2_normalize(self.product(text, image, mask, deterministic=deterministic, rngs=rngs))

    def scale(self) -> jax.Array:
        return jnp.exp(jnp.clip(self.log_scale[...], 0.0, jnp.log(100.0)))




class ResidualAdapter(nnx.Module):
    """``normalize(x + W2 gelu(W1 x))``; identity on unit vectors at initialisation."""

    def __init__(self, width: int, hidden: int, dropout: float, *, rngs: nnx.Rngs):
        self.up = dense(width, hidden, ("embed", "mlp"), init=nnx.initializers.lecun_normal(), rngs=rngs)
        self.down = dense(hidden, width, ("mlp", "embed"), init=_ZEROS, rngs=rngs)
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


class CrossEncoder(nnx.Module):
    def __init__(self, encoder: BertModel, mean_grade: float, *, rngs: nnx.Rngs):
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.head = nnx.Linear(width, 1, kernel_init=nnx.initializers.normal(0.02),
                               bias_init=nnx.initializers.constant(mean_grade), rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array, types: jax.Array) -> jax.Array:
        hidden = self.encoder(ids, mask, types)
        return self.head(mean_pool(hidden, mask))[..., 0]
