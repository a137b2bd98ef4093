"""Product attribute prediction (article type, colour, usage, season, gender) from text, image or both.

One ``FusionHead`` (``ecomjax.models.fusion``) encodes a product, one linear classifier per
attribute reads the fused vector, and the loss is the mean over attributes of the cross-entropy
of the products whose value is known (``MISSING`` labels are masked, never guessed). Switching
``fusion`` between ``text``, ``image`` and the four fusions is the whole ablation: same
features, same heads, same training and selection (``ecomjax.tasks.fit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecomjax.data.fashion import MISSING
from ecomjax.data.fashion_features import FashionFeatures
from ecomjax.models.axes import logical_init
from ecomjax.models.fusion import FusionConfig, FusionHead
from ecomjax.tasks.fit import FitConfig, FitResult, fit, map_row_batches

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


def device_features(features: FashionFeatures, **extra: np.ndarray) -> dict[str, jax.Array]:
    """The catalogue's frozen features (and any per-row arrays, e.g. labels) as device arrays.

    A plain dict, passed to compiled steps as an argument: an NNX module there would have its
    state handed back out of every call, copying hundreds of MB of features per step.
    """
    arrays = {"text": features.text_tokens, "mask": features.text_mask, "image": features.image_map}
    return {name: jnp.asarray(value) for name, value in {**arrays, **extra}.items()}


def gather(data: dict[str, jax.Array], rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(text tokens, text mask, image map) of ``rows``, inside a compiled function."""
    return data["text"][rows], data["mask"][rows], data["image"][rows]


class AttributeClassifier(nnx.Module):
    def __init__(self, fusion: FusionConfig, num_classes: Mapping[str, int], *, rngs: nnx.Rngs):
        self.encoder = FusionHead(fusion, rngs=rngs)
        self.names = tuple(num_classes)
        self.heads = nnx.Dict({
            name: nnx.Linear(fusion.output_dim, n, kernel_init=logical_init(_INIT, "embed", None),
                             bias_init=logical_init(nnx.initializers.zeros_init(), None), rngs=rngs)
            for name, n in num_classes.items()})

    def __call__(self, text, mask, image, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        fused = self.encoder(text, image, mask, deterministic=deterministic, rngs=rngs)
        hidden = jax.nn.gelu(fused)
        return {name: self.heads[name](hidden) for name in self.names}


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over rows with a known label (``labels != MISSING``); 0 if none."""
    known = labels != MISSING
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(known, labels, 0))
    return jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(jnp.sum(known), 1)


@dataclass
class AttributeResult:
    accuracy: dict[str, dict[str, float]]  # split -> attribute -> accuracy (known labels only)
    mean_accuracy: dict[str, float]  # split -> mean over attributes
    fit: FitResult
    num_params: int


@nnx.jit
def _predict_batch(model, data, batch):
    return {k: jnp.argmax(v, axis=-1) for k, v in model(*gather(data, batch)).items()}


def predict(model: AttributeClassifier, data: dict, rows: np.ndarray,
            batch_size: int = 512) -> dict[str, np.ndarray]:
    """Predicted class per attribute for ``rows`` (padded to whole batches: one compilation)."""
    return map_row_batches(_predict_batch, model, data, rows, batch_size)


def accuracies(model, data, rows: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    predictions = predict(model, data, rows)
    result = {}
    for name, predicted in predictions.items():
        truth = labels[name][rows]
        known = truth != MISSING
        result[name] = float(np.mean(predicted[known] == truth[known])) if known.any() else float("nan")
    return result


def train_attribute_classifier(features: FashionFeatures, labels: Mapping[str, np.ndarray],
                               num_classes: Mapping[str, int], rows: Mapping[str, np.ndarray],
                               fusion: FusionConfig, fit_config: FitConfig) -> AttributeResult:
    """Train on ``rows["train"]``, select on mean ``rows["valid"]`` accuracy, report every split.

    ``labels[name]`` is ``[N]`` int (class index or ``MISSING``) aligned with ``features.ids``.
    """
    missing = sorted(set(rows) ^ {"train", "valid", "test"})
    if missing:
        raise ValueError(f"rows must have exactly train, valid and test, differs in {missing}")
    for name in num_classes:
        values = labels[name][labels[name] != MISSING]
        if values.size and values.max() >= num_classes[name]:
            raise ValueError(f"labels of {name!r} reach {values.max()}, beyond its "
                             f"{num_classes[name]} classes")
    data = device_features(features, **{f"label/{name}": labels[name] for name in num_classes})
    model = AttributeClassifier(fusion, num_classes, rngs=nnx.Rngs(fit_config.seed))

    def loss_fn(model, data, batch, key):
        logits = model(*gather(data, batch), deterministic=False, rngs=nnx.Rngs(dropout=key))
        return jnp.mean(jnp.stack([masked_cross_entropy(logits[n], data[f"label/{n}"][batch])
                                   for n in model.names]))

    def validate(model) -> float:
        return float(np.nanmean(list(accuracies(model, data, rows["valid"], labels).values())))

    result = fit(model, loss_fn, data, rows["train"], validate, fit_config)
    accuracy = {split: accuracies(model, data, part, labels) for split, part in rows.items()}
    mean = {split: float(np.nanmean(list(values.values()))) for split, values in accuracy.items()}
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return AttributeResult(accuracy, mean, result, int(num_params))
