"""Pruning as an optax transformation: magnitude (unstructured) or whole feed-forward neurons.

Pruning wraps the optimizer instead of the training loop, so any ecomjax trainer gets it by
chaining one transformation after its optimizer: ``optax.chain(adamw(...), pruning(...))``.
At every ``frequency``-th step between ``begin_step`` and ``end_step`` the masks are recomputed
from the current weights for the sparsity the schedule asks for then (Zhu & Gupta 2017:
``s_t = s (1 - (1 - progress)^3)``, fast early while the weights can still recover, slow at the
end). The outgoing update of a pruned weight is ``-weight``, so after ``apply_updates`` it is
exactly zero, and it stays zero: pruned weights are the smallest, so a later mask keeps them.

* ``magnitude``: within each targeted tensor (``scope: tensor``), or over all of them at once
  (``scope: global``), the fraction ``s_t`` with the smallest ``|w|``.
* ``neurons`` (structured): the units of each feed-forward block (``up`` column, its bias,
  ``down`` row) scored by ``||up_j|| * ||down_j||``; pruned units are removed for serving by
  ``shrink_feed_forward``, which builds a narrower dense model: a real speed-up, where scattered
  zeros in dense kernels give none.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecomjax.config import PruneConfig


def _path(key_path) -> str:
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def sparsity_at(step: jax.Array, sparsity: float, begin_step: int, end_step: int) -> jax.Array:
    """Zhu & Gupta's cubic schedule: 0 before ``begin_step``, ``sparsity`` from ``end_step`` on."""
    span = max(end_step - begin_step, 1)
    progress = jnp.where(step >= end_step, 1.0, jnp.clip((step - begin_step) / span, 0.0, 1.0))
    return sparsity * (1.0 - (1.0 - progress) ** 3)


def _keep_smallest_out(scores: jax.Array, fraction: jax.Array) -> jax.Array:
    """Mask (True = kept) dropping exactly ``floor(fraction * n)`` of the lowest scores."""
    flat = scores.reshape(-1)
    drop = jnp.floor(fraction * flat.size).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
    return (ranks >= drop).reshape(scores.shape)


class _FeedForward(NamedTuple):
    """Leaf indices of one feed-forward block: up kernel [D, F], up bias [F], down kernel [F, D]."""

    up: int
    up_bias: int | None
    down: int


def feed_forward_blocks(paths: list[str]) -> list[_FeedForward]:
    """Find ``.../feed_forward/up/kernel`` + ``.../feed_forward/down/kernel`` pairs (the SASRec
    layout); an empty list means nothing to prune structurally."""
    index = {p.removesuffix("/value"): i for i, p in enumerate(paths)}
    blocks = []
    for p, i in index.items():
        if p.endswith("feed_forward/up/kernel"):
            stem = p.removesuffix("up/kernel")
            if stem + "down/kernel" not in index:
                raise ValueError(f"{p} has no matching {stem}down/kernel")
            blocks.append(_FeedForward(i, index.get(stem + "up/bias"), index[stem + "down/kernel"]))
    return blocks


class PruneState(NamedTuple):
    count: jax.Array
    masks: tuple  # one bool array per parameter leaf (shape () = never pruned)


def pruning(config: PruneConfig, total_steps: int) -> optax.GradientTransformation:
    """The transformation for ``config`` over a run of ``total_steps`` optimizer steps."""
    if not 0 < config.sparsity < 1:
        raise ValueError(f"efficiency.prune.sparsity={config.sparsity} must be in (0, 1) to prune")
    if config.end_fraction < config.begin_fraction:
        raise ValueError(f"efficiency.prune.end_fraction={config.end_fraction} is before "
                         f"begin_fraction={config.begin_fraction}")
    begin = int(config.begin_fraction * total_steps)
    end = int(config.end_fraction * total_steps)
    targets = re.compile(config.targets)

    def init(params):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = [_path(k) for k, _ in leaves]
        if config.method == "neurons":
            blocks = feed_forward_blocks(paths)
            if not blocks:
                raise ValueError("efficiency.prune.method=neurons: the model has no feed_forward/up + down "
                                 "kernels to prune")
            pruned = {i for b in blocks for i in b if i is not None}
        else:
            pruned = {i for i, p in enumerate(paths) if targets.search(p.removesuffix("/value"))
                      and leaves[i][1].ndim >= 2}
            if not pruned:
                raise ValueError(f"efficiency.prune.targets={config.targets!r} matches no parameter of "
                                 f"two or more dimensions; paths are like {paths[:3]}")
        masks = tuple(jnp.ones(leaf.shape, bool) if i in pruned else jnp.ones((), bool)
                      for i, (_, leaf) in enumerate(leaves))
        return PruneState(jnp.zeros((), jnp.int32), masks)

    def new_masks(params, masks, fraction):
        leaves = jax.tree.leaves(params)
        masks = list(masks)
        if config.method == "magnitude":
            pruned = [i for i in range(len(leaves)) if masks[i].ndim]
            if config.scope == "tensor":
                for i in pruned:
                    masks[i] = _keep_smallest_out(jnp.abs(leaves[i]), fraction)
                return tuple(masks)
            # global: one ranking over every targeted weight, so tensors (and table rows) with
            # many small weights give up more of them
            keep = _keep_smallest_out(jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in pruned]), fraction)
            offsets = np.cumsum([0] + [leaves[i].size for i in pruned])
            for k, i in enumerate(pruned):
                masks[i] = keep[offsets[k]:offsets[k + 1]].reshape(leaves[i].shape)
            return tuple(masks)
        paths = [_path(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for block in feed_forward_blocks(paths):
            up, down = leaves[block.up], leaves[block.down]
            score = jnp.linalg.norm(up, axis=0) * jnp.linalg.norm(down, axis=1)  # [F]
            keep = _keep_smallest_out(score, fraction)
            masks[block.up] = jnp.broadcast_to(keep[None, :], up.shape)
            masks[block.down] = jnp.broadcast_to(keep[:, None], down.shape)
            if block.up_bias is not None:
                masks[block.up_bias] = keep
        return tuple(masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("pruning needs the parameters: call tx.update(grads, state, params)")
        count = state.count
        due = (count >= begin) & (count <= end) & (((count - begin) % config.frequency == 0) | (count == end))
        fraction = sparsity_at(count, config.sparsity, begin, end)
        masks = jax.lax.cond(due, lambda: new_masks(params, state.masks, fraction), lambda: state.masks)
        flat_updates, treedef = jax.tree.flatten(updates)
        flat_params = jax.tree.leaves(params)
        masked = [jnp.where(m, u, -p).astype(u.dtype) for u, p, m in zip(flat_updates, flat_params, masks, strict=True)]
        return jax.tree.unflatten(treedef, masked), PruneState(count + 1, masks)

    return optax.GradientTransformation(init, update)


def pruning_end_step(config: PruneConfig, total_steps: int) -> int:
    """The step from which the target sparsity holds: checkpoints before it are not selectable."""
    return int(config.end_fraction * total_steps) if config.sparsity > 0 else 0


def sparsity_report(params: Any, pattern: str = PruneConfig.targets) -> dict[str, Any]:
    """Fraction of exact zeros per matching parameter (2-D and up) and over all of them."""
    rows, zeros, total = {}, 0, 0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _path(key_path).removesuffix("/value")
        if leaf.ndim < 2 or not re.search(pattern, name):
            continue
        z = int(np.sum(np.asarray(leaf) == 0))
        rows[name] = round(z / leaf.size, 4)
        zeros, total = zeros + z, total + leaf.size
    return {"per_tensor": rows, "overall": round(zeros / max(total, 1), 4), "weights": int(total)}


def _narrow(linear, keep: np.ndarray, axis: int):
    from flax import nnx

    kernel = np.take(np.asarray(linear.kernel[...]), keep, axis=axis)
    out = nnx.Linear(kernel.shape[0], kernel.shape[1], use_bias=linear.bias is not None, dtype=linear.dtype,
                     param_dtype=kernel.dtype, rngs=nnx.Rngs(0))
    out.kernel[...] = jnp.asarray(kernel)
    if linear.bias is not None:
        bias = np.asarray(linear.bias[...])
        out.bias[...] = jnp.asarray(bias[keep] if axis == 1 else bias)
    return out


def shrink_feed_forward(model):
    """A copy of ``model`` whose feed-forward blocks (modules with ``up`` and ``down``
    ``nnx.Linear`` layers) keep only their live units: the units whose ``up`` column or ``down``
    row has a non-zero weight. Exact for neuron-pruned weights (a dead unit's bias is pruned
    too, and GELU(0) = ReLU(0) = 0). Returns the model and ``{block path: [width before, after]}``."""
    from flax import nnx

    model = nnx.clone(model)
    widths = {}
    for path, module in list(nnx.iter_modules(model)):
        up, down = getattr(module, "up", None), getattr(module, "down", None)
        if not (isinstance(up, nnx.Linear) and isinstance(down, nnx.Linear)):
            continue
        alive = (np.abs(np.asarray(up.kernel[...])).sum(0) > 0) | (np.abs(np.asarray(down.kernel[...])).sum(1) > 0)
        keep = np.flatnonzero(alive)
        if len(keep) == 0:
            raise ValueError(f"every unit of {'/'.join(map(str, path))} is pruned: nothing would pass")
        widths["/".join(map(str, path))] = [int(alive.size), len(keep)]
        module.up = _narrow(up, keep, axis=1)
        module.down = _narrow(down, keep, axis=0)
    return model, widths
