"""Train state of one model, initialised straight into its shardings, and the update step.

The state is a plain dict of pytrees: ``params`` (what the stage trains), ``buffers`` (every other
variable of the module: frozen weights, fixed item features), ``opt_state`` and ``step``. It is
built abstractly first (``jax.eval_shape``), its shardings read from the logical axes the model
declared (``ecomjax.train.sharding``), and then initialised by a jitted function with those
output shardings, so no array is ever whole on one device. The update step is a pure function
of ``(state, batch)``: dropout keys derive from the step number, so a resumed run replays the
computation of an uninterrupted one exactly, on any mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ecomjax.errors import InputError
from ecomjax.models.paths import flat_params, param_path
from ecomjax.train.sharding import DATA_AXIS, process_rows, replicated, tree_shardings

LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


def split_model(model: nnx.Module, trainable: nnx.filterlib.Filter) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, trained variables, everything else)``."""
    return nnx.split(model, trainable, ...)


def _set_params(model: nnx.Module, given: Mapping[str, Any]) -> None:
    """Overwrite the ``Param``s of ``model`` whose path is in ``given`` (``train.init_from``)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for path, variable in flat:
        name = param_path(path)
        if name in given:
            variable.set_value(given[name])
    nnx.update(model, nnx.from_flat_state(flat))


def fresh_state(build: Callable[[], nnx.Module], trainable: nnx.filterlib.Filter,
                tx: optax.GradientTransformation, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    model = build()
    if given:
        _set_params(model, given)
    _, params, buffers = split_model(model, trainable)
    return {"params": params, "buffers": buffers, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


@dataclass
class StateLayout:
    """Where a stage's state lives: the graph of its module and the sharding of every array."""

    graphdef: nnx.GraphDef
    sharding: Any  # pytree of NamedSharding matching the state
    abstract: Any  # the state's ShapeDtypeStructs, with those shardings


def state_layout(build: Callable[[], nnx.Module], trainable: nnx.filterlib.Filter,
                 tx: optax.GradientTransformation, rules: Mapping[str, str | None],
                 mesh: jax.sharding.Mesh) -> StateLayout:
    graphdef = split_model(nnx.eval_shape(build), trainable)[0]
    shapes = jax.eval_shape(lambda: fresh_state(build, trainable, tx))
    sharding = tree_shardings(shapes, rules, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, sharding)
    return StateLayout(graphdef, sharding, abstract)


def initial_state(layout: StateLayout, build: Callable[[], nnx.Module], trainable: nnx.filterlib.Filter,
                  tx: optax.GradientTransformation, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state written by a jitted initialiser straight into ``layout.sharding``; ``given``
    (``{param_path: array}``, a finished run's parameters) replaces the fresh values at its paths,
    and the optimizer state starts from them."""
    if not given:
        return jax.jit(lambda: fresh_state(build, trainable, tx), out_shardings=layout.sharding)()
    return jax.jit(lambda g: fresh_state(build, trainable, tx, g), out_shardings=layout.sharding)(dict(given))


def check_given(given: Mapping[str, Any], model_params: Any, key: str, new: Callable[[str], bool]) -> None:
    """``given`` must hold every parameter of the model except the ones ``new`` accepts
    (adapters that start fresh), each with the same shape and dtype: a message names the first
    one that differs."""
    need = {k: v for k, v in flat_params(model_params).items() if not new(k)}
    missing, extra = sorted(need.keys() - given.keys()), sorted(given.keys() - need.keys())
    if missing or extra:
        raise InputError(f"{key}: its model has other parameters than this run's (only there: {extra[:3]}, "
                         f"only here: {missing[:3]}); use the same model section")
    for name, leaf in need.items():
        have = given[name]
        if tuple(have.shape) != tuple(leaf.shape) or have.dtype != leaf.dtype:
            raise InputError(f"{key}: {name} is {have.dtype}{list(have.shape)} there, "
                             f"{leaf.dtype}{list(leaf.shape)} here; use the same model section")


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss: LossFn,
                    base_key: jax.Array) -> Callable:
    """``(state, batch) -> (state, metrics)``: one optimizer step on ``loss(model, batch, key)``."""

    def train_step(state: dict[str, Any], batch: Mapping[str, jax.Array]):
        key = jax.random.fold_in(base_key, state["step"])

        def objective(params):
            value, aux = loss(nnx.merge(graphdef, params, state["buffers"]), batch, key)
            return value, aux

        (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates), "buffers": state["buffers"],
                     "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads), **aux}

    return train_step


class UpdateProgram:
    """One stage's optimizer, state layout and compiled update step on one mesh: what the loop
    runs, and exactly what the sharding tests and benchmark compile and measure."""

    def __init__(self, stage, rules: Mapping[str, str | None], mesh: jax.sharding.Mesh, seed: int,
                 total_steps: int):
        from ecomjax.train.optimizer import make_optimizer

        cfg = stage.train
        self.stage, self.mesh = stage, mesh
        self.tx, self.schedule = make_optimizer(cfg, total_steps, stage.update_transforms(total_steps))
        self.trainable = stage.trainable()
        self.layout = state_layout(stage.build, self.trainable, self.tx, rules, mesh)
        self.base_key = jax.random.fold_in(jax.random.key(seed, impl=cfg.prng_impl), _stage_index(stage.name))
        self.train_step = make_train_step(self.layout.graphdef, self.tx, stage.loss, self.base_key)
        self._compiled: dict[Any, Any] = {}

    def init(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return initial_state(self.layout, self.stage.build, self.trainable, self.tx, given)

    def flops_step(self) -> Callable:
        """The update step traced with ``stage.flops_loss`` (no loops), for cost analysis."""
        return make_train_step(self.layout.graphdef, self.tx, self.stage.flops_loss, self.base_key)

    def compile(self, state: Any, batch: Mapping[str, Any]) -> Any:
        """The update step compiled for ``state`` and ``batch`` (arrays or ``ShapeDtypeStruct``s
        with their shardings: a step can be compiled, and its memory read, without allocating)."""
        shardings = {k: v.sharding for k, v in batch.items()}
        fn = jax.jit(self.train_step, in_shardings=(self.layout.sharding, shardings),
                     out_shardings=(self.layout.sharding, replicated(self.mesh)), donate_argnums=(0,))
        return fn.lower(state, batch).compile()

    def step(self, state: dict[str, Any], batch: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, jax.Array], bool]:
        """``(compiled step, the batch on the devices, whether this call compiled)``: one
        compilation per batch shape and sharding (usually one in all)."""
        shardings = batch_shardings(batch, self.mesh)
        signature = tuple((k, np.shape(v), np.asarray(v).dtype.str, str(shardings[k].spec)) for k, v in batch.items())
        device = device_batch(batch, shardings)
        fresh = signature not in self._compiled
        if fresh:
            self._compiled[signature] = self.compile(state, device)
        return self._compiled[signature], device, fresh


def _stage_index(name: str) -> int:
    """A fixed integer per stage name, so stages of one run draw independent dropout keys."""
    return int.from_bytes(name.encode()[:4].ljust(4, b"\0"), "little")


def batch_shardings(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
    """Each array's leading axis split over ``data`` (whole when it does not divide)."""
    size = mesh.shape[DATA_AXIS]
    return {key: NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if value.ndim and value.shape[0] % size == 0
            else replicated(mesh) for key, value in batch.items()}


def device_batch(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """Global arrays from a host batch: every process feeds only its own rows of each array."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = shardings[key]
        rows = process_rows(sharding, value.shape) if value.ndim else slice(None)
        out[key] = jax.make_array_from_process_local_data(sharding, value[rows], value.shape)
    return out
