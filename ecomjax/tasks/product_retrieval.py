"""Attribute-query product retrieval (``task: product_retrieval``): a query tower, a fused product
tower, in-batch softmax.

A shopper types "navy tee for him"; the catalogue has titles without colour words and photos.
The query tower maps the query's MiniLM sentence embedding through an MLP; the product tower is
a ``FusionHead`` over the title's token states and the photo's feature map (or one modality, for
the ablation): ``ecomjax.models.towers.TwoTower``. Training pairs each query wording with one of
its relevant products and uses the batch's other products as negatives, except those relevant to
the query too (known from the attributes, so a second "men's black t-shirt" in the batch is not
pushed away). Evaluation ranks every held-out product of a split for every held-out query of it
(``ecomjax.data.fashion_queries`` for the queries and grades, ``ecomjax.eval.graded`` for the
metrics); selection on validation NDCG@10.

After training the run embeds the whole catalogue with the kept product tower
(``WORKDIR/products.npz``), so ``run.search("navy tee for him", k)`` needs only the query
encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecomjax.config import RunConfig, TrainConfig
from ecomjax.data.fashion_queries import relevance_grades
from ecomjax.data.fashion_setup import FashionData, FashionDataConfig, prepare_fashion
from ecomjax.errors import InputError
from ecomjax.eval.graded import retrieval_metrics
from ecomjax.models.fusion import FusionConfig
from ecomjax.models.towers import TwoTower
from ecomjax.tasks.attributes import feature_spec, fusion_of, product_columns, row_batches
from ecomjax.tasks.base import Stage, Task


@dataclass
class RetrievalConfig(RunConfig):
    task: Literal["product_retrieval"] = "product_retrieval"
    workdir: str = "runs/fashion_retrieval"
    data: FashionDataConfig = field(default_factory=FashionDataConfig)
    model: FusionConfig = field(default_factory=lambda: FusionConfig(fusion="concat"))
    temperature: float = 0.05  # initial softmax temperature (learned)
    # cross_attention's product tower reads 16 image positions per product: 15 epochs bound it;
    # all of them run (validation curves bump early, then climb again), the best one is kept
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=15, batch_size=256, learning_rate=1e-3, weight_decay=1e-4, warmup_fraction=0.05,
        early_stopping_patience=15))


def in_batch_softmax_loss(model: TwoTower, batch: dict[str, jax.Array], key) -> jax.Array:
    """Cross-entropy of each query against the batch's products; other relevant ones masked."""
    drop_q, drop_p = jax.random.split(key)
    q = model.embed_queries(batch["query"], deterministic=False, rngs=nnx.Rngs(dropout=drop_q))
    p = model.embed_products(batch["text"], batch["mask"], batch["image"], deterministic=False,
                             rngs=nnx.Rngs(dropout=drop_p))
    logits = model.scale() * q @ p.T
    grades = relevance_grades(batch["query_codes"], batch["product_codes"])
    diagonal = jnp.eye(q.shape[0], dtype=bool)
    logits = jnp.where((grades == 2) & ~diagonal, -1e9, logits)  # false negatives are not negatives
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(q.shape[0])))


def _embed_products(graphdef, state, text, mask, image):
    return nnx.merge(graphdef, state).embed_products(text, mask, image)


def _embed_queries(graphdef, state, queries):
    return nnx.merge(graphdef, state).embed_queries(queries)


_jitted_products = jax.jit(_embed_products, static_argnums=(0,))
_jitted_queries = jax.jit(_embed_queries, static_argnums=(0,))


def _in_batches(fn, arrays: tuple[np.ndarray, ...], rows: np.ndarray, batch_size: int = 512) -> np.ndarray:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        take = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)]) if len(rows) > batch_size else chunk
        out.append(np.asarray(fn(*(a[take] for a in arrays)))[:len(chunk)])
    return np.concatenate(out)


def product_vectors(model: TwoTower, columns: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return _in_batches(lambda *a: _jitted_products(graphdef, state, *a),
                       (columns["text"], columns["mask"], columns["image"]), rows)


def query_vectors(model: TwoTower, embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return _in_batches(lambda q: _jitted_queries(graphdef, state, q), (embeddings,), rows)


class RetrievalStage(Stage):
    name = "model"
    monitor = "ndcg@10"

    def __init__(self, task: RetrievalTask, spec: dict[str, Any]):
        self.task, self.config, self.spec = task, task.config, spec
        self.train = task.config.train
        self.fusion = fusion_of(task.config.model, spec)

    def build(self) -> nnx.Module:
        return TwoTower(self.spec["query_dim"], self.fusion, rngs=nnx.Rngs(self.config.seed),
                        temperature=self.config.temperature)

    def batches(self, epoch: int):
        data, columns = self.task.data, self.task.columns

        def gather(pair_rows: np.ndarray) -> dict[str, np.ndarray]:
            pairs = data.pairs[pair_rows]
            queries, products = pairs[:, 0], pairs[:, 1]
            return {"query": data.query_embeddings[queries], "query_codes": data.query_codes[queries],
                    "product_codes": data.product_codes[products],
                    **{k: v[products] for k, v in columns.items()}}

        return row_batches(np.arange(len(self.task.data.pairs)), self.train.batch_size, self.config.seed, epoch,
                           gather)

    def loss(self, model, batch, rng):
        return in_batch_softmax_loss(model, batch, rng), {}

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        data = self.task.data
        queries, products = data.query_rows[split], data.rows[split]
        q = query_vectors(model, data.query_embeddings, queries)
        p = product_vectors(model, self.task.columns, products)
        grades = relevance_grades(data.query_codes[queries], data.product_codes[products])
        return {**retrieval_metrics(q @ p.T, grades, 10), "queries": len(queries), "products": len(products)}


class RetrievalTask(Task):
    name = "product_retrieval"
    Config = RetrievalConfig
    config: RetrievalConfig

    def objective(self) -> tuple[str, bool]:
        return RetrievalStage.monitor, True

    def __init__(self, config: RetrievalConfig):
        super().__init__(config)
        self.data: FashionData | None = None

    def describe_data(self) -> dict[str, Any]:
        from ecomjax.tasks.attributes import AttributesTask

        return AttributesTask.describe_data(self)  # the same catalogue

    def prepare(self) -> dict[str, Any]:
        self.data = prepare_fashion(self.config.data, self.config.seed, queries=True,
                                    progress=self.config.train.progress)
        self.columns = product_columns(self.data)
        return {**feature_spec(self.data), "query_dim": int(self.data.query_embeddings.shape[1])}

    def vocabulary(self) -> dict[str, np.ndarray]:
        return {"product_ids": np.asarray(self.data.features.ids),
                "titles": np.asarray([p.title for p in self.data.products])}

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        return [RetrievalStage(self, spec)]

    def run(self, trainer, spec: dict[str, Any]) -> dict[str, Any]:
        model = trainer.fit(self.stages(spec)[0]).model
        if trainer.primary:  # the catalogue in the kept product tower's space: what search ranks
            vectors = product_vectors(model, self.columns, np.arange(len(self.data.products)))
            np.savez(self.workdir / "products.npz", vectors=vectors.astype(np.float32))
        return self.report({"model": model})

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        stage = self.stages({**feature_spec(self.data), "query_dim": int(self.data.query_embeddings.shape[1])})[0]
        splits = {split: stage.evaluate(models["model"], split) for split in ("valid", "test")}
        return {**splits, "fusion": self.config.model.fusion, "setup": self.data.summary(),
                "num_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(models["model"], nnx.Param)))),
                "protocol": {"queries": "composed from attributes over each split's own held-out products; test "
                                        "wordings never seen in training",
                             "ranking": "every product of the split, for every query of it",
                             "ndcg": "gains 2^grade - 1, ties against the model (ecomjax.eval.graded)",
                             "selection": "best validation ndcg@10"}}

    def summary(self, metrics: dict[str, Any]) -> str:
        return "\n".join(f"{split:6s} ndcg@10 {metrics[split]['ndcg@10']:.4f}  recall@10 {metrics[split]['recall@10']:.4f}"
                         for split in ("valid", "test"))

    def inference(self, run) -> Any:
        return ProductSearch(run)

    def artifacts(self) -> list[str]:
        return ["vocab.npz", "products.npz"]


@dataclass(frozen=True)
class Found:
    product_ids: np.ndarray
    titles: list[str]
    scores: np.ndarray


class ProductSearch:
    """``search(query, k)`` over the whole catalogue in the kept towers' space."""

    def __init__(self, run):
        from ecomjax.encoders.text import TextEncoder

        self.run = run
        with np.load(run.workdir / "products.npz") as archive:
            self.products = archive["vectors"]
        self.ids, self.titles = run.vocab["product_ids"], run.vocab["titles"]
        self.encoder = TextEncoder.from_pretrained(run.config.data.text_encoder)

    def search(self, query: str, k: int = 10) -> Found:
        if not query.strip():
            raise InputError("query is empty")
        if not 1 <= k <= len(self.ids):
            raise InputError(f"k={k} must be in [1, {len(self.ids)}]")
        embedding = self.encoder.encode([query])
        q = query_vectors(self.run.model, embedding, np.arange(1))[0]
        scores = self.products @ q
        top = np.argsort(-scores, kind="stable")[:k]
        return Found(self.ids[top], [str(self.titles[i]) for i in top], scores[top])
