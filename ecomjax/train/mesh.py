"""Device mesh and shardings for training.

Today every run uses a ``(data, model)`` mesh over the available devices with all of them on
``data``: parameters and optimizer state are replicated, batches are split along ``data``. The
train step is compiled with these shardings explicitly, so a larger mesh changes placement, not
code.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS, MODEL_AXIS = "data", "model"


def make_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh(
        (jax.device_count(), 1), (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto, AxisType.Auto)
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
