"""EHCF's whole-data ("non-sampling") loss of the multi-behaviour recommender.

Every (user, item) pair of every trained behaviour is a weighted regression example: observed
pairs have target 1 and weight 1, unobserved ones target 0 and a small weight ``c0_b``; summed
over all items the unobserved part needs no sampling (the Gram-matrix form below). Chen et al.,
"Efficient Heterogeneous Collaborative Filtering without Negative Sampling", AAAI 2020; see
``ecomjax.tasks.multi_behavior`` for the model, protocol and measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ecomjax.data.taobao import TARGET_BEHAVIOR
from ecomjax.models.multi_behavior import MultiBehaviorRecommender


@dataclass
class LossSpec:
    """What the whole-data loss of one model covers."""

    behaviors: tuple[str, ...]
    loss_weights: tuple[float, ...]
    negative_weights: tuple[float, ...]
    dropout: float


def whole_data_loss(model: MultiBehaviorRecommender, users: jax.Array,
                    pairs: tuple[tuple[jax.Array, jax.Array, jax.Array], ...], spec: LossSpec,
                    key: jax.Array) -> jax.Array:
    """EHCF's non-sampling loss of a batch of users over all items (see the module doc).

    ``pairs[b]`` is ``(rows, items, bought)``: every observed pair of behaviour ``b`` of these users,
    flat, ``rows`` indexing ``users``, ``items`` padded with ``num_items``, ``bought`` 1 where the
    pair is also a training purchase (used by the interaction bonus). Up to a constant the result
    is ``sum_b w_b sum_{u in users, all items i} c_bui (y_bui - score_b(u, i))^2``.
    """
    history = None
    if model.use_history:  # the user's observed items of every trained behaviour
        history = (jnp.concatenate([r for r, _, _ in pairs]), jnp.concatenate([i for _, i, _ in pairs]))
    p = model.user_vectors(users, history)
    if spec.dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - spec.dropout, p.shape)
        p = jnp.where(keep, p / (1.0 - spec.dropout), 0.0)
    q = model.item_embedding[...]
    h = model.behavior_matrix()
    user_gram, item_gram = p.T @ p, q.T @ q
    total = jnp.zeros((), jnp.float32)
    for b, (weight, c0) in enumerate(zip(spec.loss_weights, spec.negative_weights, strict=True)):
        rows, items, _ = pairs[b]
        mask = (items < model.num_items).astype(p.dtype)
        r = jnp.einsum("nd,nd,d->n", p[rows], q[jnp.minimum(items, model.num_items - 1)], h[b])
        observed = jnp.sum(mask * ((1.0 - c0) * r * r - 2.0 * r))
        unobserved = c0 * jnp.sum(user_gram * item_gram * jnp.outer(h[b], h[b]))
        total = total + weight * (observed + unobserved)
    if model.interaction_bonus is not None:
        # purchase score + x on the items of an auxiliary behaviour changes their squared errors by
        # c (x^2 - 2 x (y - r)), with y = 1, c = 1 if bought, else y = 0, c = c0 (exact when an
        # item is in at most one auxiliary behaviour, as with Taobao's single one)
        t = model.behaviors.index(TARGET_BEHAVIOR)
        c0 = spec.negative_weights[t]
        for a, name in enumerate(model.auxiliary):
            rows, items, bought = pairs[model.behaviors.index(name)]
            mask = (items < model.num_items).astype(p.dtype)
            r = jnp.einsum("nd,nd,d->n", p[rows], q[jnp.minimum(items, model.num_items - 1)], h[t])
            x = model.bonus()[a]
            y = bought.astype(p.dtype)
            c = y + (1.0 - y) * c0
            total = total + spec.loss_weights[t] * jnp.sum(mask * c * (x * x - 2.0 * x * (y - r)))
    return total
