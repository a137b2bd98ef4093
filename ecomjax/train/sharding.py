"""Device mesh and logical-axis sharding rules (the MaxText pattern, in a page).

Models name the axes of their parameters once, with logical names (``vocab``, ``embed``,
``mlp``, ``heads``, ...), through ``ecomjax.models.axes.logical_init``. The ``mesh`` section of
the config maps those names to mesh axes (``data``, ``model``), so the same model trains
data-parallel on one host, vocab-/tensor-parallel on a slice, or anything between, without code changes: changing
``mesh.data`` / ``mesh.model`` / ``mesh.rules`` only changes where arrays live, and GSPMD inserts
the collectives. A parameter dimension that does not divide over its mesh axis stays whole
(replicated) rather than failing, so small heads or odd widths never block a mesh shape; item
tables are padded to a multiple of 128 rows (``models.axes.padded_vocab``) so they always divide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ecomjax.config import MeshConfig
from ecomjax.errors import InputError
from ecomjax.models.axes import LOGICAL_AXES_KEY

DATA_AXIS, MODEL_AXIS = "data", "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)


def mesh_shape(config: MeshConfig, device_count: int) -> tuple[int, int]:
    """``(data, model)`` sizes from the config; one ``-1`` takes the devices left over."""
    sizes = [config.data, config.model]
    if sizes.count(-1) > 1:
        raise InputError("mesh.data and mesh.model cannot both be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % known:
            raise InputError(
                f"mesh: {device_count} devices do not divide by the fixed axis size {known} "
                f"(mesh.data={config.data}, mesh.model={config.model})"
            )
        sizes[sizes.index(-1)] = device_count // known
    if math.prod(sizes) != device_count:
        raise InputError(
            f"mesh.data={sizes[0]} x mesh.model={sizes[1]} = {math.prod(sizes)} devices, but "
            f"{device_count} are available; the product must equal the device count (-1 = the rest)"
        )
    return sizes[0], sizes[1]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The ``(data, model)`` mesh, with explicitly typed (``Auto``) axes: GSPMD propagates shardings
    from the annotated inputs and outputs of each jitted step."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def spec_for(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    rules: Mapping[str, str | None],
    mesh: jax.sharding.Mesh,
) -> PartitionSpec:
    """PartitionSpec of one array from its logical axis names.

    A logical name missing from ``rules`` is an error (a model and its config disagree); a mesh
    axis used twice in one array, or one that does not divide the dimension, leaves that
    dimension whole.
    """
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise InputError(f"logical axes {tuple(names)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise InputError(
                f"logical axis {name!r} has no entry in mesh.rules; known: {sorted(rules)}"
            )
        axis = rules[name]
        if axis is None or axis in used or size % mesh.shape[axis]:
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(tree: Any, rules: Mapping[str, str | None], mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings for a pytree of (abstract) arrays and NNX Variables.

    Variables carry their logical axes as metadata; optimizer moments built by optax from a
    Variable tree keep that metadata, so Adam's ``mu``/``nu`` are placed like their parameters.
    Plain arrays (step counters, schedule state) are replicated.
    """

    def leaf(x):
        if _is_variable(x) and not hasattr(x, "shape"):  # optax.masked's placeholder: holds no array
            return x
        if _is_variable(x):
            names = x.get_metadata().get(LOGICAL_AXES_KEY)
            return x.replace(NamedSharding(mesh, spec_for(names, x.shape, rules, mesh)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(leaf, tree, is_leaf=_is_variable)


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous block of leading-axis rows this process feeds for a ``data``-sharded batch."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_shape[0] if rows.stop is None else rows.stop)
    lo, hi = min(starts), max(stops)
    covered = sum(b - a for a, b in {(a, b) for a, b in zip(starts, stops, strict=True)})
    if covered != hi - lo:
        raise InputError(f"this process's batch rows {sorted(zip(starts, stops, strict=True))} are not contiguous")
    return slice(lo, hi)


def to_global(local: Mapping[str, np.ndarray], sharding: NamedSharding, global_rows: int) -> dict[str, jax.Array]:
    """Assemble process-local batch rows into global arrays sharded like ``sharding``."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value, (global_rows, *value.shape[1:]))
        for key, value in local.items()
    }


def per_device_bytes(array: jax.Array) -> int:
    """Bytes of ``array`` held by one device (its largest shard)."""
    shard_shape = array.sharding.shard_shape(array.shape)
    return int(np.prod(shard_shape)) * array.dtype.itemsize
