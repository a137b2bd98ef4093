"""Product-search relevance (``task: relevance``): the models of a search run and their pipeline.

Data flow:

1. Read the relevance file, split it by query into train / valid / test, and split the training
   queries once more into *base* (the neural models learn from them) and *stack* (the
   re-rankers learn from them): the model scores a re-ranker sees are then out-of-sample, as
   they are for a new query at serving time.
2. Embed every distinct normalised query and title once with the frozen sentence encoder
   (cached by content).
3. Two gradient stages through the one loop, each early-stopped on validation RMSE: the
   bi-encoder (residual adapters on the frozen vectors; regression + in-batch softmax) and,
   optionally, the cross-encoder (the pretrained encoder fine-tuned over ``query [SEP] title``,
   or LoRA adapters on it with ``efficiency.lora``).
4. Non-gradient steps: BM25 over the catalogue's titles, the product prior, two LightGBM
   re-rankers on the stack queries (``gbdt_fast`` over features serving can afford for 100
   candidates, ``gbdt`` with the cross-encoder's score too), the HNSW index of the product tower.
5. Score every model on the test queries (RMSE where a model predicts grades, per-query
   NDCG@10) into ``metrics.json``.

``run.search("cordless drill", k)`` is the ``SearchPipeline`` over the workdir.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import POSITIVE, Check, ConfigError, LoraSection, RunConfig, TrainConfig
from ecomjax.data.files import resolve_data_path
from ecomjax.data.relevance import (
    RelevanceData,
    hash_fraction,
    normalize_text,
    read_relevance,
    split_by_query,
)
from ecomjax.errors import InputError, warn
from ecomjax.eval.graded import relevance_metrics, rmse
from ecomjax.models.towers import BiEncoder, CrossEncoder
from ecomjax.tasks.attributes import row_batches
from ecomjax.tasks.base import Stage, Task

# every BERT attention projection and both feed-forward layers
BERT_LORA_TARGETS = r".*(attention/(query|key|value|output)|intermediate|output)"


@dataclass
class RelevanceDataConfig:
    path: str = "homedepot/train.csv"  # relative paths also tried under $ECOMJAX_DATA_DIR
    test_path: str | None = None  # score this file as the test set instead of a split of ``path``
    valid_fraction: float = 0.1  # of the queries
    test_fraction: float = 0.2  # of the queries
    # share of the training queries the neural models never see: the re-rankers are trained on
    # them, so the model scores they learn from are out-of-sample, as they are on new queries
    stack_fraction: float = 0.3
    low: float = 1.0  # grade range of the file
    high: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.stack_fraction < 1:
            raise ConfigError(f"data.stack_fraction: {self.stack_fraction} must be in (0, 1)")
        if not (0 < self.valid_fraction < 1 and 0 <= self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ConfigError(f"data.valid_fraction ({self.valid_fraction}) and data.test_fraction "
                              f"({self.test_fraction}) must be fractions summing to less than 1")
        if self.test_fraction == 0 and not self.test_path:
            raise ConfigError("data.test_fraction is 0 and data.test_path is not set: nothing to test on")
        if not self.low < self.high:
            raise ConfigError(f"data.low ({self.low}) must be below data.high ({self.high})")


@dataclass
class BM25Config:
    k1: float = 1.5
    b: float = 0.75


@dataclass
class BiEncoderSection:
    hidden: int = 512
    dropout: float = 0.1
    contrastive_weight: float = 0.5  # in-batch softmax beside the grade regression; 0: regression only
    positive_grade: float = 2.5  # pairs at or above this grade are in-batch softmax positives
    # distillation from the cross-encoder (trained first then): the regression target becomes
    # (1 - w) * grade + w * the cross-encoder's predicted grade
    distill_weight: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=30, batch_size=256, learning_rate=1e-3, weight_decay=1e-4, warmup_fraction=0.05,
        early_stopping_patience=4))

    RANGES: ClassVar[dict[str, Check]] = {"distill_weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]")}


@dataclass
class CrossEncoderSection:
    enabled: bool = True  # the best offline model; off: the GBDT goes without its score
    max_length: int = 40  # query + title word pieces, [CLS]/[SEP] included; titles truncate first
    # LoRA on the encoder is efficiency.lora (rank > 0); with it the regression head trains too
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=32, learning_rate=5e-5, weight_decay=0.01, warmup_fraction=0.1,
        early_stopping_patience=1))


@dataclass
class GBDTConfig:
    num_leaves: int = 31
    learning_rate: float = 0.03
    max_rounds: int = 3000
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.8
    early_stopping_rounds: int = 100


@dataclass
class ServeConfig:
    candidates: int = 100  # ANN candidates re-ranked per query
    reranker: Literal["gbdt_fast", "gbdt", "cross_encoder", "bi_encoder"] = "gbdt_fast"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    personalization_weight: float = 0.0  # blend of a user-history model's score (see SearchPipeline)


@dataclass
class RelevanceEfficiency:
    # adapters on the pretrained cross-encoder (merged for serving); also_train e.g. the
    # LayerNorms, biases and segment embeddings (ecomjax.efficiency.lora.BERT_NORMS_BIASES_SEGMENTS)
    lora: LoraSection = field(default_factory=lambda: LoraSection(targets=BERT_LORA_TARGETS))


@dataclass
class RelevanceConfig(RunConfig):
    task: Literal["relevance"] = "relevance"
    workdir: str = "runs/search"
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # directory, weights package or hub id
    data: RelevanceDataConfig = field(default_factory=RelevanceDataConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    bi_encoder: BiEncoderSection = field(default_factory=BiEncoderSection)
    cross_encoder: CrossEncoderSection = field(default_factory=CrossEncoderSection)
    efficiency: RelevanceEfficiency = field(default_factory=RelevanceEfficiency)
    gbdt: GBDTConfig = field(default_factory=GBDTConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    RANGES: ClassVar[dict[str, Check]] = {}

    def __post_init__(self) -> None:
        if self.bi_encoder.distill_weight and not self.cross_encoder.enabled:
            raise ConfigError("bi_encoder.distill_weight > 0 learns from the cross-encoder: set "
                              "cross_encoder.enabled=true")


def _kept_valid(summary: dict[str, Any]) -> float:
    """A stage's validation monitor at its kept epoch (the loop's summary)."""
    return next(float(p[summary["monitor"]]) for p in summary["valid_curve"] if p["epoch"] == summary["best_epoch"])


def load_splits(config: RelevanceConfig) -> tuple[RelevanceData, dict[str, np.ndarray]]:
    """All rows (the test file's appended when ``data.test_path`` is set) and the row indices of
    base / stack / valid / test."""
    cfg = config.data
    data = read_relevance(resolve_data_path(cfg.path), low=cfg.low, high=cfg.high)
    if cfg.test_path:
        splits = split_by_query(data, cfg.valid_fraction, 1e-12, config.seed)
        test = read_relevance(resolve_data_path(cfg.test_path, key="data.test_path"), low=cfg.low, high=cfg.high)
        offset = len(data)
        data = RelevanceData(*(np.concatenate([getattr(data, f), getattr(test, f)])
                               for f in ("queries", "product_ids", "titles", "relevance")), source=data.source)
        splits["test"] = np.arange(offset, len(data))
    else:
        splits = split_by_query(data, cfg.valid_fraction, cfg.test_fraction, config.seed)
    train = splits.pop("train")
    stack = np.array([hash_fraction(normalize_text(q), f"stack{config.seed}") < cfg.stack_fraction
                      for q in data.queries[train]], dtype=bool)
    splits["base"], splits["stack"] = train[~stack], train[stack]
    for name, rows in splits.items():
        if not len(rows):
            raise InputError(f"the {name} split of {data.source} is empty; adjust data.*_fraction")
    return data, splits


def bi_encoder_loss(model: BiEncoder, batch: dict[str, jax.Array], key, section: BiEncoderSection) -> jax.Array:
    """Grade regression on the towers' cosine plus, with ``contrastive_weight``, the in-batch
    softmax over the batch's pairs graded >= ``positive_grade`` (another row of the same query, or
    the same product again, is not a negative)."""
    rngs = nnx.Rngs(dropout=key)
    q = model.embed_queries(batch["query"], deterministic=False, rngs=rngs)
    p = model.embed_products(batch["product"], deterministic=False, rngs=rngs)
    relevance = batch["relevance"]
    target = relevance
    if section.distill_weight:  # the same gradient as (1 - w) MSE(grade) + w MSE(teacher)
        target = (1.0 - section.distill_weight) * relevance + section.distill_weight * batch["teacher"]
    regression = jnp.mean((model.grade(jnp.sum(q * p, axis=-1)) - target) ** 2)
    if not section.contrastive_weight:
        return regression
    logits = (q @ p.T) / jnp.exp(model.log_temperature[...])
    same_query = batch["query_id"][:, None] == batch["query_id"][None, :]
    same_product = batch["product_id"][:, None] == batch["product_id"][None, :]
    diagonal = jnp.eye(q.shape[0], dtype=bool)
    logits = jnp.where((same_query | same_product) & ~diagonal, -1e9, logits)
    positive = relevance >= section.positive_grade
    per_row = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    contrastive = jnp.sum(jnp.where(positive, per_row, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
    return regression + section.contrastive_weight * contrastive


def _grades(graphdef, state, queries, products):
    model = nnx.merge(graphdef, state)
    return model.grade(jnp.sum(model.embed_queries(queries) * model.embed_products(products), axis=-1))


_jitted_grades = jax.jit(_grades, static_argnums=(0,))


class BiEncoderStage(Stage):
    name = "bi_encoder"
    monitor, higher_is_better = "rmse", False

    def __init__(self, task: RelevanceTask, spec: dict[str, Any]):
        self.task, self.config, self.spec = task, task.config, spec
        self.section = task.config.bi_encoder
        self.train = self.section.train

    def build(self) -> nnx.Module:
        s = self.section
        return BiEncoder(self.spec["embedding_dim"], s.hidden, s.dropout, rngs=nnx.Rngs(self.config.seed))

    def _rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        t = self.task
        out = {"query": t.query_vectors[t.query_index[rows]], "product": t.title_vectors[t.title_index[rows]],
               "query_id": t.query_index[rows].astype(np.int32), "product_id": t.title_index[rows].astype(np.int32),
               "relevance": t.data.relevance[rows]}
        if self.section.distill_weight:
            out["teacher"] = t.teacher_grades[rows]
        return out

    def batches(self, epoch: int):
        return row_batches(self.task.splits["base"], self.train.batch_size, self.config.seed, epoch, self._rows)

    def loss(self, model, batch, rng):
        return bi_encoder_loss(model, batch, rng, self.section), {}

    def predict(self, model: BiEncoder, rows: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        graphdef, state = nnx.split(model)
        out = []
        for start in range(0, len(rows), batch_size):
            x = self._rows(rows[start:start + batch_size])
            out.append(np.asarray(_jitted_grades(graphdef, state, x["query"], x["product"])))
        return np.concatenate(out)

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        rows = self.task.splits[split]
        predicted = self.predict(model, rows)
        return {"rmse": float(np.sqrt(np.mean((predicted - self.task.data.relevance[rows]) ** 2)))}


class CrossEncoderStage(Stage):
    name = "cross_encoder"
    monitor, higher_is_better = "rmse", False

    def __init__(self, task: RelevanceTask, spec: dict[str, Any]):
        config = task.config
        self.task, self.config, self.spec = task, config, spec
        self.train = config.cross_encoder.train
        lora = config.efficiency.lora
        self.lora = None
        if lora.rank:
            from ecomjax.efficiency.lora import LoraConfig

            self.lora = LoraConfig(lora.rank, lora.alpha, lora.targets, lora.quantize_base, lora.also_train)
            if lora.b_learning_rate_ratio != 1:
                self.train = dataclasses.replace(self.train, learning_rate_scales={
                    **self.train.learning_rate_scales, "_lora_b": lora.b_learning_rate_ratio})

    def build_base(self) -> CrossEncoder:
        """The pretrained encoder with a fresh regression head started at the training mean."""
        from ecomjax.encoders.weights import resolve_checkpoint
        from ecomjax.models.bert import load_bert

        return CrossEncoder(load_bert(resolve_checkpoint(self.config.encoder)), self.spec["mean_grade"],
                            rngs=nnx.Rngs(self.config.seed))

    def build(self) -> nnx.Module:
        model = self.build_base()
        if self.lora is not None:  # adapters on the encoder's dense layers; the head trains beside them
            from ecomjax.efficiency.lora import apply_lora

            ids = jnp.ones((2, self.config.cross_encoder.max_length), jnp.int32)
            model = apply_lora(model, self.lora, ids, jnp.ones_like(ids), jnp.zeros_like(ids), seed=self.config.seed)
        return model

    def trainable(self) -> nnx.filterlib.Filter:
        if self.lora is None:
            return nnx.Param
        from ecomjax.efficiency.lora import lora_trainable

        return lora_trainable("head", also_train=self.lora.also_train)

    def batches(self, epoch: int):
        pairs, relevance = self.task.pairs, self.task.data.relevance

        def gather(rows: np.ndarray) -> dict[str, np.ndarray]:
            return {**{k: v[rows] for k, v in pairs.items()}, "relevance": relevance[rows]}

        return row_batches(self.task.splits["base"], self.train.batch_size, self.config.seed, epoch, gather)

    def loss(self, model, batch, rng):
        del rng  # the converted encoder has no dropout
        predicted = model(batch["ids"], batch["mask"], batch["types"])
        return jnp.mean((predicted - batch["relevance"]) ** 2), {}

    def predict(self, model: CrossEncoder, rows: np.ndarray) -> np.ndarray:
        from ecomjax.search.models import cross_encoder_scores

        return cross_encoder_scores(model, self.task.pairs, rows)

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        rows = self.task.splits[split]
        predicted = self.predict(model, rows)
        return {"rmse": float(np.sqrt(np.mean((predicted - self.task.data.relevance[rows]) ** 2)))}


def _title_conflicts(data) -> dict[str, Any]:
    if not data.title_conflicts:
        return {}
    return {"products_with_two_titles": {p: list(lines) for p, lines in list(data.title_conflicts.items())[:20]},
            "products_with_two_titles_count": len(data.title_conflicts)}


class RelevanceTask(Task):
    name = "relevance"
    Config = RelevanceConfig
    config: RelevanceConfig
    # every model's scores in ``report`` are on the test queries
    test_keys = ("test_pairs", "test_queries", "mean_predictor", "bm25", "cosine", "bi_encoder", "cross_encoder",
                 "gbdt_fast", "gbdt", "gbdt_features", "source")

    def __init__(self, config: RelevanceConfig):
        super().__init__(config)
        self.data: RelevanceData | None = None

    def describe_data(self) -> dict[str, Any]:
        data, splits = load_splits(self.config)
        return {"source": data.source, "pairs": len(data), "queries": len(data.query_groups()[0]),
                "products": len(data.catalogue()[0]), "mean_relevance": round(float(data.relevance.mean()), 4),
                "splits": {k: len(v) for k, v in splits.items()}, **_title_conflicts(data)}

    def prepare(self) -> dict[str, Any]:
        from ecomjax.search.models import embed_texts

        config = self.config
        self.data, self.splits = data, splits = load_splits(config)
        print(f"relevance: {len(data)} pairs; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
        if data.title_conflicts:  # judged rows keep their own title, the catalogue the first one
            product, (first, second) = next(iter(data.title_conflicts.items()))
            warn(f"{data.source}: {len(data.title_conflicts)} products have two titles (e.g. {product} on "
                 f"lines {first} and {second}); the catalogue keeps the first")
        start = time.perf_counter()
        self.queries = [normalize_text(q) for q in data.queries]
        self.titles = [normalize_text(t) for t in data.titles]
        self.query_vectors, self.query_index = embed_texts(self.queries, config.encoder)
        self.title_vectors, self.title_index = embed_texts(self.titles, config.encoder)
        self.embed_seconds = time.perf_counter() - start
        print(f"embedded {len(self.query_vectors)} queries and {len(self.title_vectors)} titles in "
              f"{self.embed_seconds:.0f}s")
        self.pairs = None
        if config.cross_encoder.enabled:
            from ecomjax.encoders.text import load_tokenizer, tokenize_pairs
            from ecomjax.encoders.weights import resolve_checkpoint

            tokenizer = load_tokenizer(resolve_checkpoint(config.encoder), config.cross_encoder.max_length)
            self.pairs = tokenize_pairs(tokenizer, self.queries, self.titles, config.cross_encoder.max_length)
        self.spec = {"embedding_dim": int(self.query_vectors.shape[1]),
                     "mean_grade": float(np.mean(data.relevance[splits["base"]]))}
        return self.spec

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        stages: list[Stage] = [BiEncoderStage(self, spec)]
        if self.config.cross_encoder.enabled:
            stages.append(CrossEncoderStage(self, spec))
        return stages

    def run(self, trainer, spec: dict[str, Any]) -> dict[str, Any]:
        bi_stage, *cross_stage = self.stages(spec)
        models: dict[str, nnx.Module] = {}
        timings = {"embed": self.embed_seconds}
        if self.config.bi_encoder.distill_weight:  # the teacher first: its grades are the bi-encoder's targets
            models["cross_encoder"] = trainer.fit(cross_stage[0]).model
            self.teacher_grades = cross_stage[0].predict(models["cross_encoder"], np.arange(len(self.data)))
        models["bi_encoder"] = trainer.fit(bi_stage).model
        if cross_stage and "cross_encoder" not in models:
            models["cross_encoder"] = trainer.fit(cross_stage[0]).model
        models = {stage.name: models[stage.name] for stage in self.stages(spec)}  # stage order
        start = time.perf_counter()
        search_models = self._fit_rerankers(models, cross_stage[0] if cross_stage else None)
        timings["gbdt"] = time.perf_counter() - start
        if trainer.primary:
            from ecomjax.serve.search import SearchPipeline

            catalogue_ids, catalogue_titles = self.data.catalogue()
            search_models.save(self.workdir, catalogue_ids, catalogue_titles)
            start = time.perf_counter()
            SearchPipeline(search_models, catalogue_ids, catalogue_titles).save_index(self.workdir)
            timings["index"] = time.perf_counter() - start
        # Validation RMSE of every grade-predicting model (what a hyperparameter search of this task
        # selects on): the networks' at their kept epoch, the re-rankers' on their early-stopping rows.
        valid = {name: {"rmse": _kept_valid(trainer.trained[name].summary)} for name in models}
        return {**self.report(models), "valid": {**valid, **self.reranker_valid}, "seconds": timings,
                **_title_conflicts(self.data)}

    def objective(self) -> tuple[str, bool]:
        return f"{self.config.serve.reranker} rmse", False  # the served re-ranker's validation RMSE

    def objective_value(self, metrics: dict[str, Any]) -> float:
        return float(metrics["valid"][self.config.serve.reranker]["rmse"])

    def _fit_rerankers(self, models: dict[str, nnx.Module], cross_stage: CrossEncoderStage | None):
        """BM25, the product prior and the two LightGBM re-rankers, trained on the stack queries
        with the neural models' out-of-sample scores."""
        from ecomjax.search.bm25 import BM25
        from ecomjax.search.features import ProductPrior
        from ecomjax.search.models import FAST_FEATURES, SearchModels, train_gbdt

        config, data, splits = self.config, self.data, self.splits
        _, catalogue_titles = data.catalogue()
        bm25 = BM25([normalize_text(t) for t in catalogue_titles], k1=config.bm25.k1, b=config.bm25.b)
        prior = ProductPrior(data.product_ids[splits["base"]], data.relevance[splits["base"]])
        search = SearchModels(config, bm25, models["bi_encoder"], prior, gbdt_fast=None)
        self._share_vectors(search)
        features = {name: search.row_features(data, splits[name]) for name in ("stack", "valid")}
        grades = {name: data.relevance[splits[name]] for name in features}
        search.gbdt_fast = train_gbdt(config, features["stack"], grades["stack"], features["valid"], grades["valid"],
                                      FAST_FEATURES)
        self.reranker_valid = {"gbdt_fast": {"rmse": rmse(search.gbdt_fast.predict(features["valid"]), grades["valid"])}}
        if cross_stage is not None:
            cross = {name: cross_stage.predict(models["cross_encoder"], splits[name]) for name in features}
            valid_stacked = np.column_stack([features["valid"], cross["valid"]])
            search.gbdt = train_gbdt(config, np.column_stack([features["stack"], cross["stack"]]), grades["stack"],
                                     valid_stacked, grades["valid"], (*FAST_FEATURES, "cross_encoder"))
            self.reranker_valid["gbdt"] = {"rmse": rmse(search.gbdt.predict(valid_stacked), grades["valid"])}
        return search

    def _share_vectors(self, search) -> None:
        """The frozen vectors computed in ``prepare``: no text is encoded twice in a session."""
        search.remember_vectors(np.unique(np.asarray(self.queries, dtype=object).astype(str)), self.query_vectors)
        search.remember_vectors(np.unique(np.asarray(self.titles, dtype=object).astype(str)), self.title_vectors)

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        from ecomjax.run import Run
        from ecomjax.search.models import SearchModels

        if not self.config.report_test:  # every number below is scored on the test queries
            return {}
        run = Run(self.workdir, self.config, self, self.spec, models)
        search = SearchModels.from_run(run)
        self._share_vectors(search)
        data, splits = self.data, self.splits
        test = splits["test"]
        query_index = data.query_groups()[1][test]
        grades = data.relevance[test]
        low = self.config.data.low
        metrics: dict[str, Any] = {"test_pairs": len(test), "test_queries": len(np.unique(query_index))}
        mean_grade = float(np.mean(data.relevance[np.concatenate([splits["base"], splits["stack"]])]))
        metrics["mean_predictor"] = {"rmse": float(np.sqrt(np.mean((grades - mean_grade) ** 2)))}
        for name, values in search.score_rows(data, test).items():
            metrics[name] = relevance_metrics(values, grades, query_index, regression=name not in ("bm25", "cosine"),
                                              low=low)
        metrics["gbdt_features"] = list(search.feature_names)
        metrics["source"] = str(self.config.data.test_path or f"{self.config.data.path} (test split)")
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        lines = [f"{'model':14s} {'RMSE':>7s} {'NDCG@10':>8s}"]
        for name, values in metrics.items():
            if isinstance(values, dict) and ("rmse" in values or "ndcg@10" in values):
                rmse = f"{values['rmse']:.4f}" if "rmse" in values else "-"
                ndcg = f"{values['ndcg@10']:.4f}" if "ndcg@10" in values else "-"
                lines.append(f"{name:14s} {rmse:>7s} {ndcg:>8s}")
        return "\n".join(lines)

    def serving_cross_encoder(self, run) -> CrossEncoder:
        """The cross-encoder as served: a LoRA one merged into the plain encoder."""
        model = run.models["cross_encoder"]
        stage = self.stages(run.spec)[1]
        if stage.lora is None:
            return model
        from ecomjax.efficiency.lora import merged_into_base

        return merged_into_base(model, stage.build_base, stage.lora)

    def inference(self, run) -> Any:
        from ecomjax.search.models import SearchModels
        from ecomjax.serve.search import SearchPipeline

        return SearchPipeline.from_models(SearchModels.from_run(run), run.workdir)

    def artifacts(self) -> list[str]:
        return ["catalogue.npz", "prior.json", "gbdt_fast.txt", "gbdt.txt", "hnsw.faiss"]


__all__ = ["POSITIVE", "RelevanceConfig", "RelevanceTask", "bi_encoder_loss", "load_splits"]
