"""Search models: everything a search run trains, and the features they score pairs with.

``SearchModels`` holds BM25, the bi-encoder adapters, the optional cross-encoder, the product
prior and two LightGBM re-rankers, and computes the re-ranker features for any (query, product)
pairs from text alone: the same function scores a judged file offline and 100 ANN candidates
online (``ecomjax.serve.SearchPipeline``), so training and serving cannot drift apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.data.relevance import RelevanceData, normalize_text
from ecomjax.search.bi_encoder import BiEncoder, BiEncoderConfig, train_bi_encoder
from ecomjax.search.bm25 import BM25
from ecomjax.search.config import SearchConfig, load_search_config
from ecomjax.search.features import LEXICAL_FEATURES, PRIOR_FEATURES, ProductPrior, lexical_features
from ecomjax.search.store import load_params, save_params
from ecomjax.tasks.fit import FitConfig

FAST_FEATURES = (*LEXICAL_FEATURES, "bm25", "cosine", "bi_cosine", *PRIOR_FEATURES)


def embed_texts(texts: Sequence[str], checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors of the distinct texts, row -> distinct index)``: each text encoded once, in a
    canonical (sorted) order so the feature cache hits whatever rows asked for them."""
    from ecomjax.encoders.feature_cache import cached_text_embeddings

    distinct, index = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    return cached_text_embeddings(list(distinct), checkpoint), index


@nnx.jit
def _towers(model: BiEncoder, queries: jax.Array, products: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.embed_queries(queries), model.embed_products(products)


def tower_vectors(model: BiEncoder, vectors: np.ndarray, which: str, batch_size: int = 4096) -> np.ndarray:
    """Query or product tower outputs for many frozen embeddings (fixed batch: one compile)."""
    out = []
    for start in range(0, len(vectors), batch_size):
        chunk = vectors[start:start + batch_size]
        padded = np.zeros((batch_size, vectors.shape[1]), np.float32)
        padded[:len(chunk)] = chunk
        q, p = _towers(model, jnp.asarray(padded), jnp.asarray(padded))
        out.append(np.asarray(q if which == "query" else p)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, vectors.shape[1]), np.float32)


def _lgb_params(config: SearchConfig) -> dict[str, Any]:
    g = config.gbdt
    return {"objective": "regression", "learning_rate": g.learning_rate, "num_leaves": g.num_leaves,
            "min_data_in_leaf": g.min_data_in_leaf, "feature_fraction": g.feature_fraction,
            "bagging_fraction": 0.8, "bagging_freq": 1, "seed": config.seed, "verbose": -1,
            "num_threads": 0, "deterministic": True, "force_row_wise": True}


def train_gbdt(config: SearchConfig, features: np.ndarray, grades: np.ndarray, valid_features: np.ndarray,
               valid_grades: np.ndarray, names: Sequence[str]):
    import lightgbm as lgb

    train_set = lgb.Dataset(features, grades, feature_name=list(names), free_raw_data=False)
    valid_set = lgb.Dataset(valid_features, valid_grades, reference=train_set)
    booster = lgb.train(_lgb_params(config), train_set, config.gbdt.max_rounds, valid_sets=[valid_set],
                        callbacks=[lgb.early_stopping(config.gbdt.early_stopping_rounds, verbose=False)])
    return booster


@dataclass
class SearchModels:
    config: SearchConfig
    bm25: BM25
    bi_encoder: BiEncoder
    prior: ProductPrior
    gbdt_fast: Any
    gbdt: Any | None = None
    cross_encoder: Any | None = None
    cross_tokenizer: Any | None = None
    feature_names: tuple[str, ...] = FAST_FEATURES
    _parse_cache: dict = field(default_factory=dict)
    _vectors: dict = field(default_factory=dict)  # text -> frozen encoder vector, this session

    def frozen_vectors(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors of the distinct texts, row -> distinct index)``; texts seen earlier in this
        session (all of the training file's, after ``fit``) are not encoded again."""
        distinct, index = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        missing = [t for t in distinct if t not in self._vectors]
        if missing:
            vectors, where = embed_texts(missing, self.config.encoder)
            self._vectors.update(zip(missing, vectors[where], strict=True))
        return np.stack([self._vectors[t] for t in distinct]), index

    # --- features -----------------------------------------------------------------------------
    def fast_features(self, queries: Sequence[str], titles: Sequence[str], product_ids: Sequence[str],
                      q_frozen: np.ndarray, t_frozen: np.ndarray, q_tower: np.ndarray, t_tower: np.ndarray
                      ) -> np.ndarray:
        """``[n, len(FAST_FEATURES)]`` for normalised (query, title) pairs and their vectors."""
        lexical = lexical_features(queries, titles, cache=self._parse_cache)
        bm25 = self.bm25.text_scores(queries, titles)
        cosine = np.sum(q_frozen * t_frozen, axis=1)
        bi_cosine = np.sum(q_tower * t_tower, axis=1)
        return np.column_stack([lexical, bm25, cosine, bi_cosine, self.prior.features(product_ids)]).astype(np.float32)

    def _row_inputs(self, data: RelevanceData, rows: np.ndarray) -> dict[str, Any]:
        queries = [normalize_text(q) for q in data.queries[rows]]
        titles = [normalize_text(t) for t in data.titles[rows]]
        qv, qi = self.frozen_vectors(queries)
        tv, ti = self.frozen_vectors(titles)
        q_frozen, t_frozen = qv[qi], tv[ti]
        q_tower = tower_vectors(self.bi_encoder, qv, "query")[qi]
        t_tower = tower_vectors(self.bi_encoder, tv, "product")[ti]
        return {"queries": queries, "titles": titles, "q_frozen": q_frozen, "t_frozen": t_frozen,
                "q_tower": q_tower, "t_tower": t_tower, "product_ids": list(data.product_ids[rows])}

    def cross_scores(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        from ecomjax.search.cross_encoder import predict_pairs, tokenize_pairs

        pairs = tokenize_pairs(self.cross_tokenizer, queries, titles, self.config.cross_encoder.max_length)
        pairs = {k: jnp.asarray(v) for k, v in pairs.items()}
        return predict_pairs(self.cross_encoder, pairs, np.arange(len(queries)))

    def score_rows(self, data: RelevanceData, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every model's score for the given judged rows."""
        x = self._row_inputs(data, rows)
        fast = self.fast_features(x["queries"], x["titles"], x["product_ids"], x["q_frozen"], x["t_frozen"],
                                  x["q_tower"], x["t_tower"])
        out = {"bm25": fast[:, self.feature_names.index("bm25")],
               "cosine": fast[:, self.feature_names.index("cosine")],
               "bi_encoder": np.asarray(self.bi_encoder.grade(jnp.asarray(fast[:, self.feature_names.index("bi_cosine")]))),
               "gbdt_fast": self.gbdt_fast.predict(fast)}
        if self.cross_encoder is not None:
            cross = self.cross_scores(x["queries"], x["titles"])
            out["cross_encoder"] = cross
            out["gbdt"] = self.gbdt.predict(np.column_stack([fast, cross]))
        return out

    # --- training -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, config: SearchConfig, data: RelevanceData, splits: dict[str, np.ndarray], workdir: Path,
            timings: dict[str, float]) -> SearchModels:
        start = time.perf_counter()
        queries = [normalize_text(q) for q in data.queries]
        titles = [normalize_text(t) for t in data.titles]
        qv, qi = embed_texts(queries, config.encoder)
        tv, ti = embed_texts(titles, config.encoder)
        timings["embed"] = time.perf_counter() - start
        print(f"embedded {len(qv)} queries and {len(tv)} titles in {timings['embed']:.0f}s")

        catalogue_ids, catalogue_titles = data.catalogue()
        bm25 = BM25([normalize_text(t) for t in catalogue_titles], k1=config.bm25.k1, b=config.bm25.b)

        start = time.perf_counter()
        b = config.bi_encoder
        pair_data = {"query_vectors": jnp.asarray(qv), "product_vectors": jnp.asarray(tv),
                     "query_index": jnp.asarray(qi), "product_index": jnp.asarray(ti),
                     "relevance": jnp.asarray(data.relevance)}
        bi, fit_result = train_bi_encoder(
            pair_data, splits["base"], splits["valid"],
            BiEncoderConfig(b.hidden, b.dropout, b.contrastive_weight, b.positive_grade,
                            FitConfig(b.epochs, b.batch_size, b.learning_rate, patience=b.patience, seed=config.seed)),
            seed=config.seed)
        timings["bi_encoder"] = time.perf_counter() - start
        print(f"bi-encoder: best epoch {fit_result.best_epoch}, valid RMSE {-fit_result.best_score:.4f} "
              f"({timings['bi_encoder']:.0f}s)")

        prior = ProductPrior(data.product_ids[splits["base"]], data.relevance[splits["base"]])
        models = cls(config, bm25, bi, prior, gbdt_fast=None)
        for distinct, vectors in ((np.unique(np.asarray(queries, dtype=object).astype(str)), qv),
                                  (np.unique(np.asarray(titles, dtype=object).astype(str)), tv)):
            models._vectors.update(zip(distinct, vectors, strict=True))

        cross = {}
        if config.cross_encoder.enabled:
            cross = models._fit_cross_encoder(data, splits, queries, titles, timings)

        start = time.perf_counter()
        features = {}
        for name in ("stack", "valid"):
            x = models._row_inputs(data, splits[name])
            features[name] = models.fast_features(x["queries"], x["titles"], x["product_ids"], x["q_frozen"],
                                                  x["t_frozen"], x["q_tower"], x["t_tower"])
        grades = {name: data.relevance[splits[name]] for name in features}
        models.gbdt_fast = train_gbdt(config, features["stack"], grades["stack"], features["valid"],
                                      grades["valid"], FAST_FEATURES)
        if cross:
            names = (*FAST_FEATURES, "cross_encoder")
            models.gbdt = train_gbdt(config, np.column_stack([features["stack"], cross["stack"]]), grades["stack"],
                                     np.column_stack([features["valid"], cross["valid"]]), grades["valid"], names)
        timings["gbdt"] = time.perf_counter() - start
        models.save(workdir, catalogue_ids, catalogue_titles)
        return models

    def _fit_cross_encoder(self, data, splits, queries, titles, timings) -> dict[str, np.ndarray]:
        from ecomjax.search.cross_encoder import (
            CrossEncoderConfig,
            load_cross_encoder,
            predict_pairs,
            tokenize_pairs,
            train_cross_encoder,
        )

        c = self.config.cross_encoder
        start = time.perf_counter()
        mean_grade = float(np.mean(data.relevance[splits["base"]]))
        model, tokenizer = load_cross_encoder(CrossEncoderConfig(self.config.encoder, c.max_length), mean_grade,
                                              self.config.seed)
        pairs = {k: jnp.asarray(v) for k, v in tokenize_pairs(tokenizer, queries, titles, c.max_length).items()}
        pairs["relevance"] = jnp.asarray(data.relevance)
        scales = {"_lora_b": c.lora_b_learning_rate_ratio} if c.lora_rank and c.lora_b_learning_rate_ratio != 1 else {}
        fit_config = FitConfig(c.epochs, c.batch_size, c.learning_rate, weight_decay=0.01, warmup_fraction=0.1,
                               patience=c.patience, seed=self.config.seed, learning_rate_scales=scales)
        if c.lora_rank:  # adapters and head trained, merged: served (and saved) as a plain encoder
            from ecomjax.efficiency.lora import LoraConfig, train_merged

            model, result, _ = train_merged(
                model, LoraConfig(c.lora_rank, c.lora_alpha, c.lora_targets, c.lora_quantize_base, c.lora_also_train),
                (pairs["ids"][:2], pairs["mask"][:2], pairs["types"][:2]),
                lambda adapted, trainable: train_cross_encoder(pairs, splits["base"], splits["valid"], adapted,
                                                               fit_config, trainable=trainable),
                "head", seed=self.config.seed)
        else:
            result = train_cross_encoder(pairs, splits["base"], splits["valid"], model, fit_config)
        self.cross_encoder, self.cross_tokenizer = model, tokenizer
        scores = {name: predict_pairs(model, pairs, splits[name]) for name in ("stack", "valid")}
        timings["cross_encoder"] = time.perf_counter() - start
        print(f"cross-encoder: valid RMSE {-result.best_score:.4f} ({timings['cross_encoder']:.0f}s)")
        return scores

    # --- persistence --------------------------------------------------------------------------
    def save(self, workdir: Path, catalogue_ids: np.ndarray, catalogue_titles: np.ndarray) -> None:
        np.savez(workdir / "catalogue.npz", ids=np.asarray(catalogue_ids, dtype=str),
                 titles=np.asarray(catalogue_titles, dtype=str))
        save_params(self.bi_encoder, workdir / "bi_encoder.npz")
        (workdir / "prior.json").write_text(json.dumps(self.prior.to_dict()))
        self.gbdt_fast.save_model(str(workdir / "gbdt_fast.txt"), num_iteration=self.gbdt_fast.best_iteration)
        if self.cross_encoder is not None:
            save_params(self.cross_encoder, workdir / "cross_encoder.npz")
            self.gbdt.save_model(str(workdir / "gbdt.txt"), num_iteration=self.gbdt.best_iteration)

    @classmethod
    def load(cls, workdir: str | Path) -> SearchModels:
        import lightgbm as lgb

        workdir = Path(workdir)
        if not (workdir / "gbdt_fast.txt").is_file():
            raise FileNotFoundError(f"{workdir} holds no trained search run (no gbdt_fast.txt); "
                                    "train one with `ecomjax train CONFIG` (task: search)")
        config = load_search_config(workdir / "config.yaml")
        with np.load(workdir / "catalogue.npz") as archive:
            titles = archive["titles"]
        bm25 = BM25([normalize_text(t) for t in titles], k1=config.bm25.k1, b=config.bm25.b)
        b = config.bi_encoder
        width = np.load(workdir / "bi_encoder.npz")["query_tower/up/kernel"].shape[0]
        bi = load_params(BiEncoder(width, b.hidden, b.dropout, rngs=nnx.Rngs(0)), workdir / "bi_encoder.npz")
        prior = ProductPrior.from_dict(json.loads((workdir / "prior.json").read_text()))
        models = cls(config, bm25, bi, prior, lgb.Booster(model_file=str(workdir / "gbdt_fast.txt")))
        if (workdir / "cross_encoder.npz").is_file():
            from ecomjax.search.cross_encoder import CrossEncoderConfig, load_cross_encoder

            model, tokenizer = load_cross_encoder(CrossEncoderConfig(config.encoder, config.cross_encoder.max_length),
                                                  2.0, config.seed)
            models.cross_encoder = load_params(model, workdir / "cross_encoder.npz")
            models.cross_tokenizer = tokenizer
            models.gbdt = lgb.Booster(model_file=str(workdir / "gbdt.txt"))
        return models


