"""Post-training int8 quantization: dense layers through qwix, embedding tables row by row.

Two mechanisms, because a recommender has two kinds of weights:

* **Dense layers** (attention projections, feed-forward, towers) go through qwix's PTQ
  provider: each kernel is stored as int8 with one scale per output channel, and with
  ``activations="int8"`` each input row is quantized at run time, so the matmul itself runs
  int8 x int8 -> int32. That is where the speed comes from: x86 CPUs with VNNI / AMX and GPUs
  with int8 tensor cores execute it 2-4x faster than float32; weight-only int8 saves bytes but
  dequantizes before the matmul and is not faster.
* **Embedding tables** are gathers, not dots, so qwix leaves them alone; yet in a recommender the
  item table is most of the bytes and, as the output layer scoring the whole catalogue, most of
  the inference FLOPs. ``Int8Table`` keeps one scale per row: a popular item's vector and a
  rarely bought one's differ several-fold in norm, and one scale per table would round the rare
  rows to a handful of levels. Lookups dequantize the rows they read; ``scores(hidden)`` runs the
  catalogue matmul in int8 with the per-row scales applied to the int32 result.

A quantized model is an ordinary NNX module: ``save_quantized`` writes its arrays,
``load_quantized`` fills an abstract copy built from the same float architecture (no float
weights needed at load time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import QuantizeConfig
from ecomjax.errors import InputError, MissingFileError, UnknownKeyError
from ecomjax.models.paths import param_path

INT8_MAX = 127.0
# The ops qwix rewrites: the dense layers' ``dot_general``s. Attention's activation x activation
# einsums stay float: they hold no weights, and quantizing them (qwix's default) rounds the
# training-time (fake) and served (int8) paths differently when both einsum and dot_general match.
DENSE_OPS = ("dot_general",)


class QuantizedRows(nnx.Variable):
    """Int8 values and their scales: stored and served, never trained."""


def quantize_rows(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 with one scale per row (last axis reduced): ``values ~ q * scale``.

    An all-zero row (padding ids, pruned rows) gets scale 1 and stays exactly zero."""
    absmax = jnp.max(jnp.abs(values), axis=-1, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(jnp.float32)
    q = jnp.clip(jnp.round(values / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return q, scale


class Int8Table(nnx.Module):
    """An ``nnx.Embed`` replacement for inference: int8 rows, a float32 scale per row."""

    def __init__(self, table: jax.Array, *, activations: str = "int8"):
        if table.ndim != 2:
            raise InputError(f"an embedding table is [rows, width], got shape {list(table.shape)}")
        if activations not in ("int8", "none"):
            raise InputError(f"activations must be 'int8' or 'none', not {activations!r}")
        q, scale = quantize_rows(jnp.asarray(table, jnp.float32))
        self.qvalue = QuantizedRows(q)
        self.scale = QuantizedRows(scale)
        self.num_embeddings, self.features = table.shape
        self.activations = activations

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.qvalue[...], ids, axis=0).astype(jnp.float32)
        return rows * jnp.take(self.scale[...], ids, axis=0)

    def dequantize(self) -> jax.Array:
        return self.qvalue[...].astype(jnp.float32) * self.scale[...]

    def scores(self, hidden: jax.Array) -> jax.Array:
        """``hidden [..., D] -> [..., rows]`` dot products with every row, float32.

        int8 activations: ``hidden`` is quantized per row too, the matmul accumulates in int32
        and both scales multiply the result (exact up to the two roundings)."""
        q, scale = self.qvalue[...], self.scale[...][:, 0]
        if self.activations == "none":
            return jnp.einsum("...d,nd->...n", hidden.astype(jnp.float32), q.astype(jnp.float32)) * scale
        hq, hscale = quantize_rows(hidden.astype(jnp.float32))
        acc = jax.lax.dot_general(hq, q, (((hq.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * hscale * scale


def fake_quantize_rows(values: jax.Array) -> jax.Array:
    """The int8 round trip of ``quantize_rows`` in the forward pass, the identity in the backward
    pass (straight-through estimator): training sees the rounding serving will apply."""
    q, scale = quantize_rows(values)
    rounded = (q.astype(jnp.float32) * scale).astype(values.dtype)
    return values + jax.lax.stop_gradient(rounded - values)


def quantization_aware(model: nnx.Module, config: QuantizeConfig, *example_args, method: str = "__call__") -> nnx.Module:
    """``model`` with qwix's quantized-training provider on the dense layers ``quantize_model``
    would quantize: the forward pass of ``method`` rounds kernels to int8 (a scale per output
    channel) and, with ``activations="int8"``, the matmul inputs per row; gradients pass straight
    through. The parameters keep their float32 values and paths, so checkpoints, ``train.init_from``
    and the post-training export read them unchanged. Tables are not dots: the trainer rounds the
    output table with ``fake_quantize_rows``."""
    import qwix

    act = jnp.int8 if config.activations == "int8" else None
    rules = [qwix.QtRule(module_path=config.module_path, op_names=DENSE_OPS, weight_qtype=jnp.int8, act_qtype=act)]
    return qwix.quantize_model(model, qwix.QtProvider(rules), *example_args, methods=(method,))


def _quantize_dense(model: nnx.Module, config: QuantizeConfig, method: str, example_args: tuple) -> nnx.Module:
    import qwix  # imported here: only quantizing needs it

    act = jnp.int8 if config.activations == "int8" else None
    rules = [qwix.QuantizationRule(module_path=config.module_path, op_names=DENSE_OPS, weight_qtype=jnp.int8,
                                   act_qtype=act)]
    return qwix.quantize_model(model, qwix.PtqProvider(rules), *example_args, methods=(method,))


def _replace_tables(model: nnx.Module, config: QuantizeConfig) -> None:
    """Swap every ``nnx.Embed`` with at least ``min_table_rows`` rows for an ``Int8Table``."""
    for path, module in list(nnx.iter_modules(model)):
        if not isinstance(module, nnx.Embed) or module.num_embeddings < config.min_table_rows:
            continue
        parent = model
        for part in path[:-1]:
            parent = parent[part] if isinstance(part, int) else getattr(parent, part)
        table = Int8Table(module.embedding[...], activations=config.activations)
        if isinstance(path[-1], int):
            parent[path[-1]] = table
        else:
            setattr(parent, path[-1], table)


def quantize_model(model: nnx.Module, config: QuantizeConfig, *example_args, method: str = "__call__") -> nnx.Module:
    """A quantized copy of ``model`` (the float model is left as it is).

    ``example_args`` are inputs of ``model.<method>``: qwix runs it once to find the matmuls of
    that method (the dense layers it reaches are quantized; layers only other methods use stay
    float). Tables are replaced wherever they are used."""
    if config.weights == "none":
        raise InputError("efficiency.quantize.weights is 'none': nothing to quantize")
    quantized = _quantize_dense(nnx.clone(model), config, method, example_args)
    if config.tables:
        _replace_tables(quantized, config)
    return quantized


def recommender_example_inputs(max_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(items, positions, segments)`` of one user for ``quantize_model(..., method="encode")``
    of a sequential recommender (the values only have to be valid)."""
    items = jnp.ones((1, max_len), jnp.int32)
    positions = jnp.arange(max_len - 1, -1, -1, dtype=jnp.int32)[None, :]
    return items, positions, jnp.ones((1, max_len), jnp.int32)


def abstract_quantized(build_float: Callable[[], nnx.Module], config: QuantizeConfig, *example_args,
                       method: str = "__call__") -> nnx.Module:
    """The quantized architecture with shapes only: the target ``load_quantized`` fills."""
    return nnx.eval_shape(lambda: quantize_model(build_float(), config, *example_args, method=method))


# --- bytes ---------------------------------------------------------------------------------------

def _leaves(model: nnx.Module) -> list[tuple[str, Any]]:
    state = nnx.state(model, nnx.Not(nnx.RngState))
    return [(param_path(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]


def model_bytes(model: nnx.Module) -> dict[str, int]:
    """Bytes of every array the model holds (parameters, fixed features, int8 values, scales)."""
    return {path: int(leaf.size * leaf.dtype.itemsize) for path, leaf in _leaves(model)
            if hasattr(leaf, "dtype")}


_QVALUE = re.compile(r"^(?P<layer>.*?)/(array/)?qvalue(?P<tail>/value)?$")


def quantized_layer_bytes(float_model: nnx.Module, quantized: nnx.Module) -> dict[str, dict[str, int]]:
    """Per quantized layer: its float32 bytes and its int8 + scale bytes (the acceptance
    criterion is their ratio: 0.25 plus one float32 scale per row or output channel)."""
    float_bytes = {path.removesuffix("/value"): size for path, size in model_bytes(float_model).items()}
    qbytes = model_bytes(quantized)
    layers: dict[str, dict[str, int]] = {}
    for path, size in qbytes.items():
        match = _QVALUE.match(path)
        if match is None:
            continue
        layer = match["layer"]  # .../kernel (a qwix layer) or .../ids (an Int8Table)
        scale = path[: path.rindex("qvalue")] + "scale" + (match["tail"] or "")
        original = next((float_bytes[name] for name in (layer, layer + "/embedding") if name in float_bytes), None)
        if original is None:
            raise UnknownKeyError(f"quantized layer {layer} has no float counterpart")
        layers[layer] = {"float": original, "quantized": size + qbytes[scale]}
    return layers


# --- save / load -----------------------------------------------------------------------------------

def save_quantized(model: nnx.Module, directory: str | Path) -> Path:
    """Write every array of the quantized model to ``directory/quantized.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {path: np.asarray(leaf) for path, leaf in _leaves(model) if hasattr(leaf, "dtype")}
    target = directory / "quantized.npz"
    np.savez(target, **arrays)
    return target


def load_quantized(abstract: nnx.Module, directory: str | Path) -> nnx.Module:
    """Fill ``abstract`` (``abstract_quantized(...)``) with the arrays ``save_quantized`` wrote;
    a missing or mis-shaped array is an error naming it."""
    path = Path(directory) / "quantized.npz"
    if not path.exists():
        raise MissingFileError(f"{path} not found: run with efficiency.quantize.weights=int8 first")
    stored = np.load(path)
    graphdef, state = nnx.split(abstract)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    leaves = []
    for key_path, leaf in flat:
        name = param_path(key_path)
        if not hasattr(leaf, "dtype"):
            leaves.append(leaf)
            continue
        if name not in stored.files:
            raise UnknownKeyError(f"{path} has no array {name!r}: saved from another architecture?")
        value = stored[name]
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise InputError(f"{path}: {name} is {value.dtype}{list(value.shape)}, the model expects "
                             f"{leaf.dtype}{list(leaf.shape)}")
        leaves.append(jnp.asarray(value))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
