"""LoRA adapters through qwix: train a low-rank update of frozen pretrained weights, merge to serve.

``apply_lora`` gives every dense layer whose module path matches ``config.targets`` two new
``nnx.LoRAParam`` matrices, ``A [in, r]`` (random) and ``B [r, out]`` (zeros, so training starts
from the pretrained model exactly), and the layer computes ``x W + (alpha / r) x A B``. Training
only ``lora_trainable`` (the adapters plus any named fresh parts such as a regression head)
moves a few percent of the parameters, so the optimizer state and the per-task checkpoint
shrink by the same factor. With ``quantize_base`` the frozen ``W`` is stored int8 (QLoRA: the
base costs a quarter of the bytes while the adapters learn in float32).

``merge_lora`` folds ``(alpha / r) A B`` into ``W`` and returns the plain model: serving costs
exactly what the base model costs.

Where configs reach it: the search cross-encoder (``cross_encoder.lora_*``), a sequential
recommender (``efficiency.lora`` with ``train.init_from``: adapters on a finished run's
transformer, the base frozen) and the ranker (``adapt``: a finished ranker adapted on new data,
merged before it is saved).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError
from ecomjax.models.paths import param_path

# ``LoraConfig.also_train`` for the BERT encoders (``ecomjax.models.bert``): every LayerNorm, every
# bias and the token-type (segment) embeddings: 31k parameters, 0.14% of MiniLM-L6. A cross-encoder
# feeds query and title as segments 0 and 1, a distinction MiniLM's sentence training barely used
# (the two rows differ by 0.16 in norm, a word vector by ~1.1): full fine-tuning can sharpen it,
# adapters on dense layers cannot. On Home Depot, with the rate validation then picks, LoRA went
# from 88% to 105% of full fine-tuning's NDCG@10 gain (benchmarks/efficiency.py, README).
BERT_NORMS_BIASES_SEGMENTS = r".*(norm/.*|/bias|token_type/.*)"


@dataclass
class LoraConfig:
    rank: int = 8  # adapter rank r
    alpha: float = 16.0  # the update is scaled by alpha / r
    targets: str = r".*(attention/(query|key|value|out)|intermediate|output)"  # regex, full match of module paths
    quantize_base: bool = False  # QLoRA: the frozen weights in int8 (qwix), adapters float32
    # Regex (full match of parameter paths such as ``encoder/layers/0/attention_norm/scale``) of
    # pretrained parameters trained beside the adapters: a low-rank update cannot move a bias, a
    # LayerNorm or a segment embedding, and these are few (BitFit); empty = adapters only.
    also_train: str = ""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InputError(f"lora rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise InputError(f"lora alpha must be > 0, got {self.alpha}")
        for name in ("targets", "also_train"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise InputError(f"lora {name} {getattr(self, name)!r} is not a regular expression: {exc}") from None


def apply_lora(model: nnx.Module, config: LoraConfig, *example_args, seed: int = 0,
               method: str = "__call__") -> nnx.Module:
    """A copy of ``model`` with adapters on the matching dense layers (``example_args`` feed one
    call of ``model.<method>``, which is how qwix finds the layers)."""
    import qwix

    rule = qwix.LoraRule(module_path=config.targets, rank=config.rank, alpha=config.alpha,
                         weight_qtype=jnp.int8 if config.quantize_base else None)
    adapted = qwix.apply_lora_to_model(nnx.clone(model), qwix.LoraProvider([rule]), *example_args,
                                       methods=(method,), rngs=nnx.Rngs(seed))
    if not adapter_paths(adapted):
        raise InputError(f"lora targets {config.targets!r} match no dense layer reached by {method}()")
    if config.also_train and not jax.tree.leaves(nnx.state(adapted, _params_matching(config.also_train))):
        raise InputError(f"lora also_train {config.also_train!r} matches no parameter path "
                         f"(paths look like {_first_param_path(adapted)!r})")
    return adapted


def _first_param_path(model: nnx.Module) -> str:
    path, _ = next(iter(nnx.to_flat_state(nnx.state(model, nnx.Param))))
    return param_path(path)


def adapter_paths(model: nnx.Module) -> list[str]:
    """Module paths of the layers that carry adapters."""
    return [param_path(path) for path, module in nnx.iter_modules(model)
            if hasattr(module, "kernel_lora_a")]


def lora_trainable(*fresh: str, also_train: str = "") -> nnx.filterlib.Filter:
    """What fine-tuning trains: the adapters, the fresh modules named in ``fresh`` (``"head"``) and
    the pretrained parameters whose path matches ``also_train`` (``LoraConfig.also_train``)."""
    filters = [nnx.LoRAParam, *(nnx.All(nnx.Param, nnx.PathContains(name)) for name in fresh)]
    if also_train:
        filters.append(_params_matching(also_train))
    return nnx.Any(*filters)


def _params_matching(pattern: str) -> Callable[[tuple, Any], bool]:
    """An nnx filter: parameters whose ``/``-joined path fully matches ``pattern``."""
    compiled = re.compile(pattern)

    def matches(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and compiled.fullmatch(param_path(path)) is not None

    return matches


def parameter_counts(model: nnx.Module, trainable: nnx.filterlib.Filter) -> dict[str, float]:
    """Trainable and total parameter counts (int8 base weights counted once per weight)."""
    def count(state) -> int:
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        return int(sum(np.prod(leaf.shape) for path, leaf in leaves
                       if not {"array", "scale"} <= set(param_path(path).split("/"))))  # qwix int8 scales

    train = count(nnx.state(model, trainable))
    total = count(nnx.state(model, nnx.Param))
    return {"trainable": train, "total": total, "fraction": train / max(total, 1)}


def merge_lora(adapted: nnx.Module, base: nnx.Module, config: LoraConfig) -> nnx.Module:
    """``base`` (the float architecture the adapters were put on) with ``W + (alpha / r) A B`` in
    every adapted layer and every other parameter (heads, norms) taken from ``adapted``.

    For a QLoRA model the merged ``W`` is the dequantized int8 base plus the update: what the
    adapted model computed."""
    merged = nnx.clone(base)
    modules = dict(nnx.iter_modules(merged))
    for path, module in nnx.iter_modules(adapted):
        target = modules.get(path)
        if target is None:
            continue
        for name in ("kernel", "bias", "scale", "embedding"):
            value = getattr(module, name, None)
            if value is None or not hasattr(target, name) or getattr(target, name) is None:
                continue
            if name == "kernel" and hasattr(module, "kernel_lora_a"):
                continue
            if isinstance(value, nnx.Variable):
                getattr(target, name)[...] = value[...]
        if hasattr(module, "kernel_lora_a"):
            a, b = module.kernel_lora_a[...], module.kernel_lora_b[...]
            kernel = _dense_kernel(module.kernel)
            update = (config.alpha / config.rank) * (a @ b).reshape(kernel.shape)
            target.kernel[...] = (kernel + update).astype(target.kernel.dtype)
    return merged


def merged_into_base(adapted: nnx.Module, build_base: Callable[[], nnx.Module], config: LoraConfig) -> nnx.Module:
    """The plain architecture ``build_base`` builds, holding the adapted model's parameters with
    every adapter merged in: what a LoRA run serves (no adapter matmuls, the base model's cost).
    Every parameter of the base is read from ``adapted`` (same paths), so no trained value is
    lost to a fresh initialisation."""
    from ecomjax.models.paths import flat_params, param_path

    graphdef, state = nnx.split(nnx.eval_shape(build_base))
    have = flat_params(nnx.state(adapted, nnx.Param))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    missing = [param_path(path) for path, _ in leaves if param_path(path) not in have]
    if missing:
        raise InputError(f"the adapted model lacks base parameters {missing[:3]}")
    base = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, [have[param_path(p)] for p, _ in leaves]))
    return merge_lora(adapted, base, config)


def train_merged(model: nnx.Module, config: LoraConfig, example_args: tuple,
                 train: Callable[[nnx.Module, nnx.filterlib.Filter], Any], *fresh: str,
                 seed: int = 0) -> tuple[nnx.Module, Any, dict[str, float]]:
    """Adapt ``model``, run ``train(adapted, trainable)`` (adapters + ``fresh`` modules), merge
    back: ``(plain model to serve and save, train's result, parameter_counts)``."""
    adapted = apply_lora(model, config, *example_args, seed=seed)
    trainable = lora_trainable(*fresh, also_train=config.also_train)
    result = train(adapted, trainable)
    return merge_lora(adapted, model, config), result, parameter_counts(adapted, trainable)


def _dense_kernel(kernel) -> jax.Array:
    """A float kernel, or the dequantized int8 one of a QLoRA layer (qwix ``WithAux``)."""
    if isinstance(kernel, nnx.Variable):
        return kernel[...]
    array = kernel.array
    qvalue, scale = array.qvalue, array.scale
    qvalue = qvalue[...] if isinstance(qvalue, nnx.Variable) else qvalue
    scale = scale[...] if isinstance(scale, nnx.Variable) else scale
    return qvalue.astype(jnp.float32) * scale
