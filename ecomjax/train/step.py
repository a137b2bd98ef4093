"""Train state and the compiled next-item update step, built once for the loop, tests and benchmarks.

Kept apart from the loop so that what the sharding benchmark measures and what the tests assert
(table shardings, compiled memory, collectives) is exactly what training runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecomjax.config import Config
from ecomjax.efficiency.distill import distillation_kl
from ecomjax.efficiency.lora import LoraConfig, apply_lora
from ecomjax.efficiency.prune import pruning
from ecomjax.efficiency.quantize import (
    fake_quantize_rows,
    quantization_aware,
    recommender_example_inputs,
)
from ecomjax.models import build_sequential_model
from ecomjax.models.axes import padded_vocab
from ecomjax.models.item_embedding import ItemFeatures
from ecomjax.models.paths import param_path
from ecomjax.tasks.next_item import next_item_loss
from ecomjax.train.optimizer import make_optimizer
from ecomjax.train.sharding import batch_sharding, replicated, tree_shardings

BATCH_KEYS = ("items", "targets", "segments", "positions")


@dataclass
class NextItemStep:
    """Everything needed to run (or only compile) training of one model on one mesh."""

    build_model: Callable[[], nnx.Module]  # the model with its initial parameters (seeded)
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_sharding: Any  # pytree of NamedSharding matching the state
    step_fn: Any  # jitted (state, batch) -> (state, metrics); state donated
    train_step: Any  # the same step, not jitted (for cost analysis)


@dataclass
class Teacher:
    """A finished run's model, fixed: ``nnx.merge(graphdef, params, buffers)``."""

    graphdef: nnx.GraphDef
    params: Any
    buffers: Any


def build_next_item_step(
    config: Config, num_items: int, total_steps: int, log_prior: jax.Array, mesh: jax.sharding.Mesh,
    item_features: np.ndarray | None = None, item_words: np.ndarray | None = None,
    teacher: Teacher | None = None, item_counts: np.ndarray | None = None,
) -> NextItemStep:
    """Model definition, optimizer and the sharded, donated, jitted update step (no state yet).

    ``item_features`` (``[num_items + 1, D]``, see ``ecomjax.data.item_text``) become the model's
    fixed ``ItemFeatures``: kept in ``state["buffers"]``, read by the step, never updated; so do
    the title-word ids ``item_words``. With a ``teacher`` (``efficiency.distill``) the loss mixes
    in the KL divergence to the teacher's catalogue distribution at every target position.
    ``item_counts`` (``[num_items + 1]``, training interactions) share out the kept rows of the item
    tables under ``efficiency.prune.scope: popularity``, and become the model's fixed item counts
    under ``model.item_id_min_interactions`` / ``model.item_count_buckets``.
    """

    quantize = config.efficiency.quantize
    adapters = recommender_adapters(config)
    if quantize.qat and quantize.weights == "none":
        raise ValueError("efficiency.quantize.qat=true trains for an int8 export: set efficiency.quantize.weights=int8")

    def build_model() -> nnx.Module:
        model = build_sequential_model(config.model, num_items, config.data.max_len, rngs=nnx.Rngs(config.seed),
                                       item_features=item_features, item_words=item_words, item_counts=item_counts)
        if quantize.qat:
            model = quantization_aware(model, quantize, *recommender_example_inputs(config.data.max_len),
                                       method="encode")
        if adapters is not None:
            model = apply_lora(model, adapters, *recommender_example_inputs(config.data.max_len),
                               seed=config.seed, method="encode")
        return model

    tx, schedule = make_optimizer(config.train, total_steps)
    if adapters is not None:  # only the adapters (and also_train's parameters) move; the frozen base keeps no moments
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, adapter_labels(adapters.also_train))
    distill = config.efficiency.distill
    if config.efficiency.prune.sparsity > 0:  # after the optimizer: pruned weights' updates are -weight
        row_counts = None
        if item_counts is not None:  # tables carry padding rows past the catalogue: count 0
            row_counts = np.zeros(padded_vocab(num_items + 1), np.int64)
            row_counts[:len(item_counts)] = item_counts
        tx = optax.chain(tx, pruning(config.efficiency.prune, total_steps, config.model.num_heads, row_counts))
    graphdef, _, _ = nnx.split(nnx.eval_shape(build_model), nnx.Param, ItemFeatures)
    state_sharding = tree_shardings(jax.eval_shape(lambda: _init_state(build_model, tx)), config.mesh.rules, mesh)
    base_key = jax.random.key(config.seed, impl=config.train.prng_impl)

    def train_step(state, batch):
        key = jax.random.fold_in(base_key, state["step"])
        dropout_key, loss_key = jax.random.split(key)

        def loss_fn(params):
            net = nnx.merge(graphdef, params, state["buffers"])
            hidden = net.encode(
                batch["items"], batch["positions"], batch["segments"],
                deterministic=False, rngs=nnx.Rngs(dropout=dropout_key),
            )
            table = net.item_table(deterministic=False, rngs=nnx.Rngs(dropout=jax.random.fold_in(dropout_key, 1)))
            if quantize.qat and quantize.tables:  # the catalogue scores int8 rows (and int8 hidden rows)
                table = fake_quantize_rows(table)
                if quantize.activations == "int8":
                    hidden = fake_quantize_rows(hidden)
            loss, tokens = next_item_loss(hidden, batch["targets"], table, config.loss, loss_key, log_prior, num_items)
            if teacher is None:
                return loss, tokens
            return (1.0 - distill.weight) * loss + distill.weight * _distillation_term(
                net, hidden, table, batch, teacher, distill.temperature, num_items), tokens

        (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "buffers": state["buffers"],
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads)}

    batch_sh = batch_sharding(mesh)
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_sharding, {key: batch_sh for key in BATCH_KEYS}),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )
    return NextItemStep(build_model, graphdef, tx, schedule, state_sharding, step_fn, train_step)


def _distillation_term(net, hidden, table, batch, teacher: Teacher, temperature: float, num_items: int):
    """KL(teacher || student) at temperature ``temperature`` over the catalogue, per target."""
    model = nnx.merge(teacher.graphdef, teacher.params, teacher.buffers)
    teacher_hidden = model.encode(batch["items"], batch["positions"], batch["segments"], deterministic=True)
    rows = num_items + 1  # both tables hold ids 0..num_items; padding rows past it may differ

    def logits(h, t):
        h = h.reshape(-1, h.shape[-1])
        return jnp.einsum("td,nd->tn", h, t[:rows].astype(h.dtype), preferred_element_type=jnp.float32)

    weight = (batch["targets"].reshape(-1) > 0).astype(jnp.float32)
    return distillation_kl(logits(hidden, table), logits(teacher_hidden, model.item_table()), weight,
                           temperature, num_items)


def recommender_adapters(config: Config) -> LoraConfig | None:
    """``efficiency.lora`` as a ``LoraConfig`` (``None`` when off), checked against the rest of the
    run: adapters adapt a trained model, and pruning would fight the frozen weights."""
    section = config.efficiency.lora
    if section.rank == 0:
        return None
    if not config.train.init_from:
        raise ValueError("efficiency.lora adapts a trained model: set train.init_from to a finished run's workdir")
    if config.efficiency.prune.sparsity > 0:
        raise ValueError("efficiency.lora and efficiency.prune do not combine: the base weights are frozen")
    return LoraConfig(section.rank, section.alpha, section.targets, also_train=section.also_train)


def adapter_labels(also_train: str = "") -> Callable[[Any], Any]:
    """The labels for ``optax.multi_transform``: ``"train"`` for the adapter matrices (qwix names them
    ``*_lora_a`` / ``*_lora_b``) and for the parameters whose ``/``-joined path fully matches
    ``also_train`` (``efficiency.lora.also_train``, the paths ``apply_lora`` checks), else ``"frozen"``."""
    pattern = re.compile(also_train) if also_train else None

    def label(path: tuple, _: Any) -> str:
        if "_lora_" in param_path(path):
            return "train"
        return "train" if pattern is not None and pattern.fullmatch(param_path(path)) else "frozen"

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def _init_state(build_model, tx) -> dict[str, Any]:
    _, params, buffers = nnx.split(build_model(), nnx.Param, ItemFeatures)
    return {"params": params, "buffers": buffers, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def init_next_item_state(step: NextItemStep, params: Any = None) -> dict[str, Any]:
    """Initial parameters and optimizer state, written by a jitted initialiser straight into
    ``step.state_sharding`` (never whole on one device). ``params`` (``train.init_from``: a
    finished run's leaves, ``{param_path: array}``) replace the fresh values at their paths; the
    optimizer state starts from them."""
    if params is None:
        return jax.jit(lambda: _init_state(step.build_model, step.tx), out_shardings=step.state_sharding)()

    def start(given):
        state = _init_state(step.build_model, step.tx)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state["params"])
        # given: a finished run's leaves by path; adapters it lacks keep their fresh values
        merged = jax.tree_util.tree_unflatten(
            treedef, [given.get(param_path(path), leaf) for path, leaf in leaves])
        return {**state, "params": merged, "opt_state": step.tx.init(merged)}

    return jax.jit(start, out_shardings=step.state_sharding)(params)


def abstract_next_item_state(step: NextItemStep) -> dict[str, Any]:
    """Shape/dtype/sharding placeholders of the state: compile and size a step without allocating it."""
    abstract = jax.eval_shape(lambda: _init_state(step.build_model, step.tx))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, step.state_sharding
    )
