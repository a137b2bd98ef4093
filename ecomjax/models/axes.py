"""Logical axis names on parameters: how a model says what each dimension *is*.

A model tags each parameter dimension once (``vocab``, ``embed``, ``mlp``, ``heads``, ...);
``ecomjax.train.sharding`` maps the names to mesh axes with the rules of the config. Models stay
free of device and mesh concerns.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

LOGICAL_AXES_KEY = "logical_axes"  # Variable metadata holding the logical name of each dimension
VOCAB_MULTIPLE = 128  # item tables get this many rows at a time, so they divide over any mesh axis


def logical_init(initializer: Callable, *names: str | None) -> Callable:
    """Wrap a Flax initializer so the created ``Param`` records the logical name of each dimension."""
    return nnx.with_metadata(initializer, **{LOGICAL_AXES_KEY: tuple(names)})


def padded_vocab(rows: int) -> int:
    """Rows of an item table holding ``rows`` ids, rounded up to a multiple of ``VOCAB_MULTIPLE``.

    The extra rows are never scored (losses and evaluation mask ids past ``num_items``); they let
    the table split evenly over a ``model`` axis of any power-of-two size up to 128.
    """
    return -(-rows // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def zero_padded_rows(initializer: Callable, rows: int) -> Callable:
    """Initialise the first ``rows`` rows with ``initializer`` and the padding rows with zeros.

    The real rows then get exactly the values an unpadded ``[rows, D]`` table would, so padding
    for sharding changes placement only, not the model a seed produces.
    """

    def init(key, shape, dtype=jnp.float32):
        real = initializer(key, (rows, *shape[1:]), dtype)
        return jnp.pad(real, ((0, shape[0] - rows),) + ((0, 0),) * (len(shape) - 1))

    return init
