"""Search models: everything a search run trains, and the features they score pairs with.

``SearchModels`` holds BM25, the bi-encoder adapters, the optional cross-encoder, the product
prior and two LightGBM re-rankers, and computes the re-ranker features for any (query, product)
pairs from text alone: the same function scores a judged file offline and 100 ANN candidates
online (``ecomjax.serve.SearchPipeline``), so training and serving cannot drift apart. The
relevance task (``ecomjax.tasks.relevance``) trains the neural models through the one loop and
the re-rankers beside them; ``SearchModels.load`` reads a trained workdir back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.data.relevance import RelevanceData, normalize_text
from ecomjax.errors import MissingFileError
from ecomjax.models.towers import BiEncoder, CrossEncoder
from ecomjax.search.bm25 import BM25
from ecomjax.search.features import LEXICAL_FEATURES, PRIOR_FEATURES, ProductPrior, lexical_features

FAST_FEATURES = (*LEXICAL_FEATURES, "bm25", "cosine", "bi_cosine", *PRIOR_FEATURES)


def embed_texts(texts: Sequence[str], checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors of the distinct texts, row -> distinct index)``: each text encoded once, in a
    canonical (sorted) order so the feature cache hits whatever rows asked for them."""
    from ecomjax.encoders.feature_cache import cached_text_embeddings

    distinct, index = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    return cached_text_embeddings(list(distinct), checkpoint), index


def _tower(graphdef, state, vectors, which: str):
    model = nnx.merge(graphdef, state)
    return model.embed_queries(vectors) if which == "query" else model.embed_products(vectors)


_jitted_tower = jax.jit(_tower, static_argnums=(0, 3))


def tower_vectors(model: BiEncoder, vectors: np.ndarray, which: str, batch_size: int = 4096) -> np.ndarray:
    """Query or product tower outputs for many frozen embeddings (fixed batch: one compile)."""
    graphdef, state = nnx.split(model)
    out = []
    for start in range(0, len(vectors), batch_size):
        chunk = vectors[start:start + batch_size]
        padded = np.zeros((batch_size, vectors.shape[1]), np.float32)
        padded[:len(chunk)] = chunk
        out.append(np.asarray(_jitted_tower(graphdef, state, jnp.asarray(padded), which))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, vectors.shape[1]), np.float32)


def _pair_scores(graphdef, state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, mask, types)


_jitted_pairs = jax.jit(_pair_scores, static_argnums=(0,))


def cross_encoder_scores(model: CrossEncoder, pairs: dict[str, np.ndarray], rows: np.ndarray,
                         batch_size: int = 256) -> np.ndarray:
    """Predicted grades of tokenized pairs ``rows`` (``tokenize_pairs``), in fixed-size batches."""
    graphdef, state = nnx.split(model)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        take = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)]) if len(rows) > batch_size else chunk
        out.append(np.asarray(_jitted_pairs(graphdef, state, pairs["ids"][take], pairs["mask"][take],
                                            pairs["types"][take]))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _lgb_params(config) -> dict[str, Any]:
    g = config.gbdt
    return {"objective": "regression", "learning_rate": g.learning_rate, "num_leaves": g.num_leaves,
            "min_data_in_leaf": g.min_data_in_leaf, "feature_fraction": g.feature_fraction,
            "bagging_fraction": 0.8, "bagging_freq": 1, "seed": config.seed, "verbose": -1,
            "num_threads": 0, "deterministic": True, "force_row_wise": True}


def train_gbdt(config, features: np.ndarray, grades: np.ndarray, valid_features: np.ndarray,
               valid_grades: np.ndarray, names: Sequence[str]):
    import lightgbm as lgb

    train_set = lgb.Dataset(features, grades, feature_name=list(names), free_raw_data=False)
    valid_set = lgb.Dataset(valid_features, valid_grades, reference=train_set)
    booster = lgb.train(_lgb_params(config), train_set, config.gbdt.max_rounds, valid_sets=[valid_set],
                        callbacks=[lgb.early_stopping(config.gbdt.early_stopping_rounds, verbose=False)])
    return booster


@dataclass
class SearchModels:
    config: Any  # the relevance run's config (ecomjax.tasks.relevance.RelevanceConfig)
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
    def fast_features(self, queries: Sequence[str], titles: Sequence[str], product_ids: Sequence[str] | None,
                      q_frozen: np.ndarray, t_frozen: np.ndarray, q_tower: np.ndarray, t_tower: np.ndarray,
                      prior: np.ndarray | None = None) -> np.ndarray:
        """``[n, len(FAST_FEATURES)]`` for normalised (query, title) pairs and their vectors;
        ``prior`` is ``self.prior.features(product_ids)`` when the caller keeps it per product."""
        lexical = lexical_features(queries, titles, cache=self._parse_cache)
        bm25 = self.bm25.text_scores(queries, titles)
        cosine = np.sum(q_frozen * t_frozen, axis=1)
        bi_cosine = np.sum(q_tower * t_tower, axis=1)
        prior = self.prior.features(product_ids) if prior is None else prior
        return np.column_stack([lexical, bm25, cosine, bi_cosine, prior]).astype(np.float32)

    def remember_vectors(self, texts: np.ndarray, vectors: np.ndarray) -> None:
        """Frozen vectors already computed for these (distinct, normalised) texts."""
        self._vectors.update(zip(texts, vectors, strict=True))

    def row_features(self, data: RelevanceData, rows: np.ndarray) -> np.ndarray:
        """``fast_features`` of judged rows (what the re-rankers train on)."""
        x = self._row_inputs(data, rows)
        return self.fast_features(x["queries"], x["titles"], x["product_ids"], x["q_frozen"], x["t_frozen"],
                                  x["q_tower"], x["t_tower"])

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
        from ecomjax.encoders.text import tokenize_pairs

        pairs = tokenize_pairs(self.cross_tokenizer, queries, titles, self.config.cross_encoder.max_length)
        return cross_encoder_scores(self.cross_encoder, pairs, np.arange(len(queries)))

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

    # --- persistence --------------------------------------------------------------------------
    def save(self, workdir: Path, catalogue_ids: np.ndarray, catalogue_titles: np.ndarray) -> None:
        """The non-gradient parts beside the run's checkpoints: catalogue, prior, re-rankers."""
        np.savez(workdir / "catalogue.npz", ids=np.asarray(catalogue_ids, dtype=str),
                 titles=np.asarray(catalogue_titles, dtype=str))
        (workdir / "prior.json").write_text(json.dumps(self.prior.to_dict()))
        self.gbdt_fast.save_model(str(workdir / "gbdt_fast.txt"), num_iteration=self.gbdt_fast.best_iteration)
        if self.gbdt is not None:
            self.gbdt.save_model(str(workdir / "gbdt.txt"), num_iteration=self.gbdt.best_iteration)

    @classmethod
    def from_run(cls, run) -> SearchModels:
        """A trained relevance run's models: the neural ones from its checkpoints, BM25 rebuilt
        over the saved catalogue, prior and re-rankers from their files."""
        import lightgbm as lgb

        workdir, config = Path(run.workdir), run.config
        if not (workdir / "gbdt_fast.txt").is_file():
            raise MissingFileError(f"{workdir} holds no finished search run (no gbdt_fast.txt); "
                                    "train one with `ecomjax train CONFIG` (task: relevance)")
        with np.load(workdir / "catalogue.npz") as archive:
            titles = archive["titles"]
        bm25 = BM25([normalize_text(t) for t in titles], k1=config.bm25.k1, b=config.bm25.b)
        prior = ProductPrior.from_dict(json.loads((workdir / "prior.json").read_text()))
        models = cls(config, bm25, run.models["bi_encoder"], prior, lgb.Booster(model_file=str(workdir / "gbdt_fast.txt")))
        if "cross_encoder" in run.models:
            from ecomjax.encoders.text import load_tokenizer
            from ecomjax.encoders.weights import resolve_checkpoint

            models.cross_encoder = run.task.serving_cross_encoder(run)
            models.cross_tokenizer = load_tokenizer(resolve_checkpoint(config.encoder), config.cross_encoder.max_length)
            models.gbdt = lgb.Booster(model_file=str(workdir / "gbdt.txt"))
        return models

    @classmethod
    def load(cls, workdir: str | Path) -> SearchModels:
        from ecomjax.run import load

        return cls.from_run(load(workdir))
