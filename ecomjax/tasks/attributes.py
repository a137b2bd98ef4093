"""Product attribute prediction (``task: attributes``): article type, colour, usage, season and
gender from the colour-free title, the photo, or both.

One ``FusionHead`` (``ecomjax.models.fusion``) encodes a product from the frozen encoders'
outputs, one linear classifier per attribute reads the fused vector, and the loss is the mean
over attributes of the cross-entropy of the products whose value is known (``MISSING`` labels
are masked, never guessed). ``model.fusion`` between ``text``, ``image`` and the four fusions is
the whole ablation: same split, features, heads, training and selection (mean validation
accuracy over the attributes). ``run.classify(product_ids)`` predicts the catalogue's products
by their class names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecomjax.config import RunConfig, TrainConfig
from ecomjax.data.fashion import ATTRIBUTE_FIELDS, MISSING
from ecomjax.data.fashion_setup import FashionData, FashionDataConfig, prepare_fashion
from ecomjax.models.fusion import AttributeClassifier, FusionConfig
from ecomjax.tasks.base import Stage, Task


@dataclass
class AttributesConfig(RunConfig):
    task: Literal["attributes"] = "attributes"
    workdir: str = "runs/fashion_attributes"
    data: FashionDataConfig = field(default_factory=FashionDataConfig)
    # text_dim / image_dim are read off the features; the rest is the head
    model: FusionConfig = field(default_factory=lambda: FusionConfig(fusion="concat"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=40, batch_size=128, learning_rate=1e-3, weight_decay=1e-4, warmup_fraction=0.05,
        early_stopping_patience=5))


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over rows with a known label (``labels != MISSING``); 0 if none."""
    known = labels != MISSING
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(known, labels, 0))
    return jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(jnp.sum(known), 1)


def product_columns(data: FashionData) -> dict[str, np.ndarray]:
    """The frozen features of every product (host arrays; batches gather rows)."""
    f = data.features
    return {"text": f.text_tokens, "mask": f.text_mask, "image": f.image_map}


def row_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int, gather) -> grain.MapDataset:
    """Shuffled full batches of ``rows`` for one epoch, a pure function of ``(seed, epoch)``
    (the remainder waits for another epoch's shuffle: one shape, one compilation)."""
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    return grain.MapDataset.range(len(rows) // batch_size).map(
        lambda step: gather(order[step * batch_size:(step + 1) * batch_size]))


def fusion_of(config: FusionConfig, spec: dict[str, Any]) -> FusionConfig:
    """The model section with the encoder widths of the features the run was prepared with."""
    return dataclasses.replace(config, text_dim=spec["text_dim"], image_dim=spec["image_dim"])


def feature_spec(data: FashionData) -> dict[str, Any]:
    f = data.features
    return {"text_dim": int(f.text_tokens.shape[-1]), "image_dim": int(f.image_map.shape[-1]),
            "products": len(f.ids)}


def _predict(graphdef, state, text, mask, image):
    return {k: jnp.argmax(v, axis=-1) for k, v in nnx.merge(graphdef, state)(text, mask, image).items()}


_jitted_predict = jax.jit(_predict, static_argnums=(0,))


def predict_classes(model: AttributeClassifier, columns: dict[str, np.ndarray], rows: np.ndarray,
                    batch_size: int = 512) -> dict[str, np.ndarray]:
    """Predicted class per attribute for ``rows`` (the last batch padded: one compilation)."""
    graphdef, state = nnx.split(model)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        take = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)]) if len(rows) > batch_size else chunk
        out = _jitted_predict(graphdef, state, columns["text"][take], columns["mask"][take], columns["image"][take])
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[:len(chunk)])
    return {k: np.concatenate(v) for k, v in parts.items()}


class AttributesStage(Stage):
    name = "model"
    monitor = "mean_accuracy"

    def __init__(self, task: AttributesTask, spec: dict[str, Any]):
        self.task, self.config, self.spec = task, task.config, spec
        self.train = task.config.train
        self.fusion = fusion_of(task.config.model, spec)

    def build(self) -> nnx.Module:
        return AttributeClassifier(self.fusion, self.spec["classes"], rngs=nnx.Rngs(self.config.seed))

    def batches(self, epoch: int):
        columns, labels = self.task.columns, self.task.data.labels

        def gather(rows: np.ndarray) -> dict[str, np.ndarray]:
            return {**{k: v[rows] for k, v in columns.items()}, **{f"label/{n}": labels[n][rows] for n in labels}}

        return row_batches(self.task.data.rows["train"], self.train.batch_size, self.config.seed, epoch, gather)

    def loss(self, model, batch, rng):
        logits = model(batch["text"], batch["mask"], batch["image"], deterministic=False, rngs=nnx.Rngs(dropout=rng))
        return jnp.mean(jnp.stack([masked_cross_entropy(logits[n], batch[f"label/{n}"]) for n in model.names])), {}

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        data = self.task.data
        rows = data.rows[split]
        predicted = predict_classes(model, self.task.columns, rows)
        accuracy = {}
        for name, values in predicted.items():
            truth = data.labels[name][rows]
            known = truth != MISSING
            accuracy[name] = float(np.mean(values[known] == truth[known])) if known.any() else float("nan")
        return {**accuracy, "mean_accuracy": float(np.nanmean(list(accuracy.values())))}


class AttributesTask(Task):
    name = "attributes"
    Config = AttributesConfig
    config: AttributesConfig

    def objective(self) -> tuple[str, bool]:
        return AttributesStage.monitor, True

    def __init__(self, config: AttributesConfig):
        super().__init__(config)
        self.data: FashionData | None = None

    def describe_data(self) -> dict[str, Any]:
        from ecomjax.data.fashion_setup import read_catalog

        catalog, ids = read_catalog(self.config.data)
        return {"source": str(catalog.images_path.parent), "products": len(ids), "attributes": list(ATTRIBUTE_FIELDS),
                "missing_images": len(catalog.missing_images)}

    def prepare(self) -> dict[str, Any]:
        self.data = prepare_fashion(self.config.data, self.config.seed, queries=False,
                                    progress=self.config.train.progress)
        self.columns = product_columns(self.data)
        return {**feature_spec(self.data), "classes": self.data.num_classes}

    def vocabulary(self) -> dict[str, np.ndarray]:
        vocab = {f"classes/{name}": np.asarray(v.classes) for name, v in self.data.vocabularies.items()}
        return {**vocab, "product_ids": np.asarray(self.data.features.ids)}

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        return [AttributesStage(self, spec)]

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        stage = self.stages({**feature_spec(self.data), "classes": self.data.num_classes})[0]
        splits = {split: stage.evaluate(models["model"], split) for split in ("valid", "test")}
        return {**splits, "fusion": self.config.model.fusion, "setup": self.data.summary(),
                "num_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(models["model"], nnx.Param)))),
                "protocol": {"split": "product-disjoint, stratified by article type", "metric":
                             "accuracy over products whose value is known (NA masked)",
                             "selection": "best validation mean accuracy over the attributes"}}

    def summary(self, metrics: dict[str, Any]) -> str:
        names = [*ATTRIBUTE_FIELDS, "mean_accuracy"]
        lines = [f"{'':6s} " + " ".join(f"{n:>13s}" for n in names)]
        for split in ("valid", "test"):
            lines.append(f"{split:6s} " + " ".join(f"{metrics[split][n]:13.4f}" for n in names))
        return "\n".join(lines)

    def inference(self, run) -> Any:
        return AttributePredictor(run)

    def artifacts(self) -> list[str]:
        return ["vocab.npz"]


class AttributePredictor:
    """``classify(product_ids)``: the attributes of catalogue products, by class name, from
    their frozen features (computed with the run's encoders, cached by content)."""

    def __init__(self, run):
        self.run = run
        self.classes = {k.split("/", 1)[1]: v for k, v in run.vocab.items() if k.startswith("classes/")}

    def classify(self, product_ids) -> dict[str, list[str]]:
        from ecomjax.data.fashion_features import encode_catalog
        from ecomjax.data.fashion_setup import read_catalog

        config = self.run.config.data
        catalog, _ = read_catalog(config)
        ids = np.asarray(product_ids, np.int64)
        features = encode_catalog(catalog, ids, text_checkpoint=config.text_encoder, image_size=config.image_size,
                                  cache=config.cache)
        columns = {"text": features.text_tokens, "mask": features.text_mask, "image": features.image_map}
        predicted = predict_classes(self.run.model, columns, np.arange(len(ids)))
        return {name: [str(self.classes[name][i]) for i in values] for name, values in predicted.items()}
