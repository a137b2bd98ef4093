"""The multi-behaviour recommender: shared user/item embeddings, one prediction vector per
behaviour (EHCF's ``H``), optional history pooling and a learned bonus on a user's carted items.

Training, the loss and the protocol are in ``ecomjax.tasks.multi_behavior``; this module is
the model alone, as every ecomjax model is. The user and item tables are id tables along
``vocab`` (row-sharded over ``model`` on a mesh), padded to ``padded_vocab`` rows with zeros: a
zero row adds nothing to the loss's Gram matrices and is never scored.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ecomjax.data.taobao import TARGET_BEHAVIOR
from ecomjax.errors import InputError
from ecomjax.models.axes import LOGICAL_AXES_KEY, padded_vocab


class MultiBehaviorRecommender(nnx.Module):
    """Shared user/item embeddings and one prediction vector per behaviour (see the module doc)."""

    def __init__(self, num_users: int, num_items: int, dim: int, behaviors: list[str] | tuple[str, ...],
                 *, behavior_vectors: bool = True, use_history: bool = False,
                 interaction_bonus: bool = False, init_std: float = 0.01, rngs: nnx.Rngs):
        if TARGET_BEHAVIOR not in behaviors:
            raise InputError(f"behaviors {list(behaviors)} must include {TARGET_BEHAVIOR!r}")
        self.num_users, self.num_items = num_users, num_items
        self.behaviors = tuple(behaviors)
        self.auxiliary = tuple(b for b in self.behaviors if b != TARGET_BEHAVIOR)
        self.use_history = use_history
        normal = jax.nn.initializers.truncated_normal(init_std)

        def table(rows: int) -> nnx.Param:
            real = normal(rngs.params(), (rows, dim))
            padded = jnp.pad(real, ((0, padded_vocab(rows) - rows), (0, 0)))
            return nnx.Param(padded, **{LOGICAL_AXES_KEY: ("vocab", "embed")})

        self.user_embedding = table(num_users)
        self.item_embedding = table(num_items)
        bound = math.sqrt(3.0 / dim)  # EHCF's uniform init: unit variance of the score per dim
        self.behavior_vectors = nnx.Param(jax.random.uniform(
            rngs.params(), (len(self.behaviors), dim), minval=-bound, maxval=bound)) if behavior_vectors else None
        # a learned purchase-score bonus for items the user touched in each auxiliary behaviour
        self.interaction_bonus = (nnx.Param(jnp.zeros(len(self.auxiliary)))
                                  if interaction_bonus and self.auxiliary else None)

    def behavior_matrix(self) -> jax.Array:
        """``[behaviours, dim]``; all ones for a plain dot-product model."""
        if self.behavior_vectors is None:
            return jnp.ones((len(self.behaviors), self.item_embedding.shape[1]))
        return self.behavior_vectors[...]

    def user_vectors(self, users: jax.Array, history: tuple[jax.Array, jax.Array] | None = None
                     ) -> jax.Array:
        """``p_u`` for ``users``.

        ``history`` is ``(rows, items)``: flat training interactions, ``rows`` indexing ``users``,
        ``items`` padded with ``num_items`` (ignored unless the model ``use_history``).
        """
        vectors = self.user_embedding[...][users]
        if self.use_history and history is not None:
            rows, items = history
            mask = (items < self.num_items).astype(vectors.dtype)
            embedded = self.item_embedding[...][jnp.minimum(items, self.num_items - 1)] * mask[:, None]
            total = jax.ops.segment_sum(embedded, rows, num_segments=users.shape[0])
            count = jax.ops.segment_sum(mask, rows, num_segments=users.shape[0])
            vectors = vectors + total / jnp.maximum(count, 1.0)[:, None]
        return vectors

    def item_matrix(self, behavior: str) -> jax.Array:
        """``Q * h_b`` of the real items: ``scores = user_vectors @ item_matrix(b).T`` ranks the
        whole catalogue."""
        return self.item_embedding[...][: self.num_items] * self.behavior_matrix()[self.behaviors.index(behavior)]

    def bonus(self) -> jax.Array:
        """``[auxiliary behaviours]`` purchase-score bonus (zeros when the model has none)."""
        if self.interaction_bonus is None:
            return jnp.zeros(len(self.auxiliary))
        return self.interaction_bonus[...]

    def __call__(self, users: jax.Array, behavior: str = TARGET_BEHAVIOR,
                 history: jax.Array | None = None,
                 auxiliary: dict[str, jax.Array] | None = None) -> jax.Array:
        """Dense scores ``[n, num_items]`` of ``behavior`` for ``users`` (small catalogues, tests).

        ``history`` ``[n, H]`` and ``auxiliary[name]`` ``[n, M]`` are padded item ids of these
        users (pad = ``num_items``): the training items for ``use_history``, and the items of each
        auxiliary behaviour that earn the purchase bonus.
        """
        rows = None
        if history is not None:
            rows = (jnp.broadcast_to(jnp.arange(users.shape[0])[:, None], history.shape).reshape(-1),
                    history.reshape(-1))
        scores = self.user_vectors(users, rows) @ self.item_matrix(behavior).T
        if behavior == TARGET_BEHAVIOR and auxiliary:
            index = jnp.arange(users.shape[0])[:, None]
            for a, name in enumerate(self.auxiliary):
                if name in auxiliary:
                    scores = scores.at[index, auxiliary[name]].add(self.bonus()[a], mode="drop")
        return scores
