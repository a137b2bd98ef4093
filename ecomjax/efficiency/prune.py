"""Pruning as an optax transformation: magnitude (unstructured) or whole feed-forward neurons.

Pruning wraps the optimizer instead of the training loop, so any ecomjax trainer gets it by
chaining one transformation after its optimizer: ``optax.chain(adamw(...), pruning(...))``.
At every ``frequency``-th step between ``begin_step`` and ``end_step`` the masks are recomputed
from the current weights for the sparsity the schedule asks for then (Zhu & Gupta 2017:
``s_t = s (1 - (1 - progress)^3)``, fast early while the weights can still recover, slow at the
end). The outgoing update of a pruned weight is ``-weight``, so after ``apply_updates`` it is
exactly zero, and it stays zero: pruned weights are the smallest, so a later mask keeps them.

* ``magnitude``: within each targeted tensor (``scope: tensor``), within each row of it
  (``scope: row``: every item of a table keeps the same number of its coordinates), or over all
  of them at once (``scope: global``), the fraction ``s_t`` with the smallest ``|w|``. With
  ``scope: popularity`` each row of an item table (a tensor with one row per ``row_counts``
  entry) keeps a number of coordinates growing with its item's training interactions,
  ``(count + 1) ** popularity_power``, the largest ``|w|`` of that row; other tensors are pruned
  per tensor. Why: magnitude does not tell how much a table row matters. Under the full
  softmax the vectors of rarely seen items grow long (they are pushed away from every hidden
  state): on SASRec Beauty the correlation of row norm and log count is -0.65, and one threshold
  per tensor leaves rare items more of their rows than popular ones. Measured there (50%,
  trained with pruning): validation NDCG@10 rises above the dense model's, test NDCG@10 does not
  follow. The later a position, the newer and rarer its item: test targets have a median of 12
  training interactions (21% under 5) against 15 (17%) for validation targets, and the last item
  of a test history (the validation target) is rarer than that of a validation history, so what
  this scope takes from rare rows costs the test more; see ``benchmarks/efficiency.py``.
* ``neurons`` (structured): the units of each feed-forward block (``up`` column, its bias,
  ``down`` row) scored by ``||up_j|| * ||down_j||``.
* ``heads`` (structured): the heads of each attention block (their query, key and value columns
  of the fused ``qkv`` kernel and bias, their rows of ``out``) scored by ``||V_h|| * ||O_h||``,
  the norms of the value path a head writes through (query and key only shape where it looks).
* ``neurons+heads``: both, at the same fraction of each block.

Structurally pruned units and heads are removed for serving by ``shrink_pruned``, which builds
narrower dense layers: a real speed-up, where scattered zeros in dense kernels give none.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecomjax.config import PruneConfig
from ecomjax.errors import InputError
from ecomjax.models.paths import param_path


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


class _Block(NamedTuple):
    """Leaf indices of one prunable block: the layer writing the units (kernel, bias) and the
    layer reading them. Feed-forward: ``up`` [D, F] (+ bias), ``down`` [F, D]; attention: the
    fused ``qkv`` [D, 3 H d] (+ bias), ``out`` [H d, D]."""

    first: int
    first_bias: int | None
    second: int


def _blocks(paths: list[str], container: str, first: str, second: str) -> list[_Block]:
    index = {p.removesuffix("/value"): i for i, p in enumerate(paths)}
    blocks = []
    for p, i in index.items():
        if p.endswith(f"{container}/{first}/kernel"):
            stem = p.removesuffix(f"{first}/kernel")
            if stem + f"{second}/kernel" not in index:
                raise InputError(f"{p} has no matching {stem}{second}/kernel")
            blocks.append(_Block(i, index.get(stem + f"{first}/bias"), index[stem + f"{second}/kernel"]))
    return blocks


def feed_forward_blocks(paths: list[str]) -> list[_Block]:
    """Find ``.../feed_forward/up/kernel`` + ``.../feed_forward/down/kernel`` pairs (the SASRec
    layout); an empty list means nothing to prune structurally."""
    return _blocks(paths, "feed_forward", "up", "down")


def attention_blocks(paths: list[str]) -> list[_Block]:
    """Find ``.../attention/qkv/kernel`` + ``.../attention/out/kernel`` pairs (the SASRec layout)."""
    return _blocks(paths, "attention", "qkv", "out")


def _structures(method: str) -> set[str]:
    return {"neurons+heads": {"neurons", "heads"}}.get(method, {method})


class PruneState(NamedTuple):
    count: jax.Array
    masks: tuple  # one bool array per parameter leaf (shape () = never pruned)


def popularity_shares(row_counts: np.ndarray, power: float) -> np.ndarray:
    """Row weights ``(count + 1) ** power``: how the kept coordinates of a table are shared out."""
    counts = np.asarray(row_counts, np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise InputError("row_counts must be one non-negative count per table row")
    return ((counts + 1.0) ** power).astype(np.float32)


def _row_budgets(shares: jax.Array, width: int, keep: jax.Array) -> jax.Array:
    """Coordinates each row keeps: ``min(floor(lam * share), width)`` for the largest ``lam``
    whose total is at most ``keep``, the rest handed out one each to the rows with the largest
    fractional parts, so that the total is exactly ``keep``."""
    def total(lam):
        return jnp.minimum(jnp.floor(lam * shares), width).sum()

    def bisect(_, bounds):
        low, high = bounds
        mid = (low + high) / 2
        fits = total(mid) <= keep
        return jnp.where(fits, mid, low), jnp.where(fits, high, mid)

    low, _ = jax.lax.fori_loop(0, 64, bisect, (jnp.zeros(()), width / shares.min() + 1.0))
    exact = low * shares
    budget = jnp.minimum(jnp.floor(exact), width)
    remainder = keep - budget.sum()
    fractional = jnp.where(budget < width, exact - jnp.floor(exact), -1.0)
    order = jnp.argsort(-fractional, stable=True)
    bonus = jnp.zeros_like(budget).at[order].set((jnp.arange(shares.size) < remainder).astype(budget.dtype))
    return jnp.minimum(budget + bonus, width).astype(jnp.int32)


def _keep_by_popularity(scores: jax.Array, shares: jax.Array, fraction: jax.Array, previous: jax.Array) -> jax.Array:
    """Mask of a ``[rows, width]`` table: each row keeps its budget (``_row_budgets``) of largest
    scores, never more than it kept before (a pruned weight is not revived)."""
    rows, width = scores.shape
    keep = rows * width - jnp.floor(fraction * rows * width)
    budget = jnp.minimum(_row_budgets(shares, width, keep), previous.sum(axis=1))
    ranks = jnp.argsort(jnp.argsort(-scores, axis=1, stable=True), axis=1, stable=True)
    return ranks < budget[:, None]


def pruning(config: PruneConfig, total_steps: int, num_heads: int | None = None,
            row_counts: np.ndarray | None = None) -> optax.GradientTransformation:
    """The transformation for ``config`` over a run of ``total_steps`` optimizer steps;
    ``num_heads`` (heads per attention block) is needed to prune heads; ``row_counts`` (interactions
    per row of the item tables, padding rows 0) for ``scope: popularity``."""
    if not 0 < config.sparsity < 1:
        raise InputError(f"efficiency.prune.sparsity={config.sparsity} must be in (0, 1) to prune")
    if config.end_fraction < config.begin_fraction:
        raise InputError(f"efficiency.prune.end_fraction={config.end_fraction} is before "
                         f"begin_fraction={config.begin_fraction}")
    begin = int(config.begin_fraction * total_steps)
    end = int(config.end_fraction * total_steps)
    targets = re.compile(config.targets)
    popularity = config.method == "magnitude" and config.scope == "popularity"
    if popularity and row_counts is None:
        raise InputError("efficiency.prune.scope=popularity needs the items' interaction counts: only the "
                         "recommender trainer (one row per item) provides them")
    shares = jnp.asarray(popularity_shares(row_counts, config.popularity_power)) if popularity else None

    def is_table(leaf) -> bool:
        return popularity and leaf.ndim == 2 and leaf.shape[0] == shares.shape[0]

    def init(params):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = [param_path(k) for k, _ in leaves]
        structures = _structures(config.method)
        if structures != {"magnitude"}:
            pruned = set()
            if "neurons" in structures:
                blocks = feed_forward_blocks(paths)
                if not blocks:
                    raise InputError(f"efficiency.prune.method={config.method}: the model has no "
                                     "feed_forward/up + down kernels to prune")
                pruned |= {i for b in blocks for i in b if i is not None}
            if "heads" in structures:
                blocks = attention_blocks(paths)
                if not blocks:
                    raise InputError(f"efficiency.prune.method={config.method}: the model has no "
                                     "attention/qkv + out kernels to prune")
                if num_heads is None or num_heads < 2:
                    raise InputError(f"efficiency.prune.method={config.method} needs a model with 2 or more "
                                     f"attention heads (model.num_heads={num_heads})")
                pruned |= {i for b in blocks for i in b if i is not None}
        else:
            pruned = {i for i, p in enumerate(paths) if targets.search(p)
                      and leaves[i][1].ndim >= 2}
            if not pruned:
                raise InputError(f"efficiency.prune.targets={config.targets!r} matches no parameter of "
                                 f"two or more dimensions; paths are like {paths[:3]}")
            if popularity and not any(is_table(leaves[i][1]) for i in pruned):
                raise InputError(f"efficiency.prune.scope=popularity: no targeted parameter has one row per "
                                 f"item ({shares.shape[0]} rows); targets={config.targets!r}")
        masks = tuple(jnp.ones(leaf.shape, bool) if i in pruned else jnp.ones((), bool)
                      for i, (_, leaf) in enumerate(leaves))
        return PruneState(jnp.zeros((), jnp.int32), masks)

    def new_masks(params, masks, fraction):
        leaves = jax.tree.leaves(params)
        masks = list(masks)
        if config.method == "magnitude":
            pruned = [i for i in range(len(leaves)) if masks[i].ndim]
            if config.scope in ("tensor", "popularity"):
                for i in pruned:
                    if is_table(leaves[i]):
                        masks[i] = _keep_by_popularity(jnp.abs(leaves[i]), shares, fraction, masks[i])
                    else:
                        masks[i] = _keep_smallest_out(jnp.abs(leaves[i]), fraction)
                return tuple(masks)
            if config.scope == "row":
                for i in pruned:
                    rows = jnp.abs(leaves[i]).reshape(-1, leaves[i].shape[-1])
                    masks[i] = jax.vmap(_keep_smallest_out, in_axes=(0, None))(rows, fraction).reshape(leaves[i].shape)
                return tuple(masks)
            # global: one ranking over every targeted weight, so tensors (and table rows) with
            # many small weights give up more of them
            keep = _keep_smallest_out(jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in pruned]), fraction)
            offsets = np.cumsum([0] + [leaves[i].size for i in pruned])
            for k, i in enumerate(pruned):
                masks[i] = keep[offsets[k]:offsets[k + 1]].reshape(leaves[i].shape)
            return tuple(masks)
        paths = [param_path(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        structures = _structures(config.method)
        for block in feed_forward_blocks(paths) if "neurons" in structures else ():
            up, down = leaves[block.first], leaves[block.second]
            score = jnp.linalg.norm(up, axis=0) * jnp.linalg.norm(down, axis=1)  # [F]
            keep = _keep_smallest_out(score, fraction)
            masks[block.first] = jnp.broadcast_to(keep[None, :], up.shape)
            masks[block.second] = jnp.broadcast_to(keep[:, None], down.shape)
            if block.first_bias is not None:
                masks[block.first_bias] = keep
        for block in attention_blocks(paths) if "heads" in structures else ():
            qkv, out = leaves[block.first], leaves[block.second]
            head_dim = out.shape[0] // num_heads
            values = qkv[:, 2 * num_heads * head_dim:].reshape(qkv.shape[0], num_heads, head_dim)
            score = (jnp.linalg.norm(values, axis=(0, 2))
                     * jnp.linalg.norm(out.reshape(num_heads, head_dim, -1), axis=(1, 2)))  # [H]
            rows = jnp.repeat(_keep_smallest_out(score, fraction), head_dim)  # [H d]
            columns = jnp.tile(rows, 3)  # query, key and value columns of each head
            masks[block.first] = jnp.broadcast_to(columns[None, :], qkv.shape)
            masks[block.second] = jnp.broadcast_to(rows[:, None], out.shape)
            if block.first_bias is not None:
                masks[block.first_bias] = columns
        return tuple(masks)

    def update(updates, state, params=None):
        if params is None:
            raise InputError("pruning needs the parameters: call tx.update(grads, state, params)")
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
        name = param_path(key_path)
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


def _shrink_attention(module) -> tuple[int, int]:
    """Drop the heads of ``module`` (fused ``qkv`` + ``out``) whose weights are all zero."""
    heads, head_dim = module.num_heads, module.head_dim
    qkv = np.abs(np.asarray(module.qkv.kernel[...])).reshape(-1, 3, heads, head_dim)
    out = np.abs(np.asarray(module.out.kernel[...])).reshape(heads, head_dim, -1)
    keep = np.flatnonzero((qkv.sum((0, 1, 3)) > 0) | (out.sum((1, 2)) > 0))
    if len(keep) == 0:
        raise InputError("every head of an attention block is pruned: nothing would pass")
    rows = (keep[:, None] * head_dim + np.arange(head_dim)).ravel()
    columns = np.concatenate([part * heads * head_dim + rows for part in range(3)])
    module.qkv = _narrow(module.qkv, columns, axis=1)
    module.out = _narrow(module.out, rows, axis=0)
    module.num_heads = len(keep)
    return heads, len(keep)


def shrink_pruned(model):
    """A copy of ``model`` without its structurally pruned parts: feed-forward blocks (modules
    with ``up`` and ``down`` ``nnx.Linear`` layers) keep only the units whose ``up`` column or
    ``down`` row has a non-zero weight; attention blocks (``qkv`` + ``out`` + ``num_heads``) only
    the heads with a non-zero weight. Exact for structurally pruned weights (a dead unit's bias is
    pruned too, GELU(0) = ReLU(0) = 0; a dead head's value is 0). Returns the model and
    ``{module path: [units or heads before, after]}`` for the modules that shrank."""
    from flax import nnx

    model = nnx.clone(model)
    widths = {}
    for path, module in list(nnx.iter_modules(model)):
        name = "/".join(map(str, path))
        if hasattr(module, "num_heads") and isinstance(getattr(module, "qkv", None), nnx.Linear):
            before, after = _shrink_attention(module)
            if after < before:
                widths[name] = [before, after]
            continue
        up, down = getattr(module, "up", None), getattr(module, "down", None)
        if not (isinstance(up, nnx.Linear) and isinstance(down, nnx.Linear)):
            continue
        alive = (np.abs(np.asarray(up.kernel[...])).sum(0) > 0) | (np.abs(np.asarray(down.kernel[...])).sum(1) > 0)
        keep = np.flatnonzero(alive)
        if len(keep) == 0:
            raise InputError(f"every unit of {name} is pruned: nothing would pass")
        if len(keep) == alive.size:
            continue
        widths[name] = [int(alive.size), len(keep)]
        module.up = _narrow(up, keep, axis=1)
        module.down = _narrow(down, keep, axis=0)
    return model, widths
