"""Train the relevance models of a search run and write a servable workdir.

Data flow (``SearchConfig``):

1. Read the relevance file, split it by query into train / valid / test, and split the training
   queries once more into *base* (the neural models learn from them) and *stack* (the GBDT
   learns from them). Model scores the GBDT sees are then out-of-sample, as they are for a new
   query at serving time; trained on the base queries, the GBDT would trust an overfit score.
2. Embed every distinct normalised query and title once with the sentence encoder (cached).
3. Models: BM25 over titles; the bi-encoder adapters (base queries, early-stopped on valid);
   optionally the fine-tuned cross-encoder (same); two LightGBM re-rankers on the stack queries:
   ``gbdt_fast`` over features that serving can afford for 100 candidates in the latency budget
   (lexical, BM25, encoder cosines, product prior) and ``gbdt`` with the cross-encoder's score too.
4. Score every model on the test queries (RMSE where a model predicts grades, NDCG@10 per
   query) and write ``metrics.json`` beside the models, the catalogue and the HNSW index.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecomjax.config import save_config
from ecomjax.data.files import resolve_data_path
from ecomjax.data.relevance import (
    RelevanceData,
    hash_fraction,
    normalize_text,
    read_relevance,
    split_by_query,
)
from ecomjax.eval.graded import relevance_metrics
from ecomjax.search.config import SearchConfig


@dataclass
class SearchRun:
    metrics: dict[str, Any]
    workdir: Path


def load_splits(config: SearchConfig) -> tuple[RelevanceData, dict[str, np.ndarray]]:
    """All rows (the test file's appended when ``data.test_path`` is set) and the row indices of
    base / stack / valid / test."""
    cfg = config.data
    data = read_relevance(resolve_data_path(cfg.path), low=cfg.low, high=cfg.high)
    test_fraction = 0.0 if cfg.test_path else cfg.test_fraction
    if cfg.test_path:
        splits = split_by_query(data, cfg.valid_fraction, 1e-12, config.seed)
        test = read_relevance(resolve_data_path(cfg.test_path), low=cfg.low, high=cfg.high)
        offset = len(data)
        data = RelevanceData(*(np.concatenate([getattr(data, f), getattr(test, f)])
                               for f in ("queries", "product_ids", "titles", "relevance")), source=data.source)
        splits["test"] = np.arange(offset, len(data))
    else:
        splits = split_by_query(data, cfg.valid_fraction, test_fraction, config.seed)
    train = splits.pop("train")
    stack = np.array([hash_fraction(normalize_text(q), f"stack{config.seed}") < cfg.stack_fraction
                      for q in data.queries[train]], dtype=bool)
    splits["base"], splits["stack"] = train[~stack], train[stack]
    for name, rows in splits.items():
        if not len(rows):
            raise ValueError(f"the {name} split is empty; adjust data.*_fraction")
    return data, splits


def score_models(models, data: RelevanceData, rows: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """``({model: RMSE (grade predictors only) and per-query NDCG@10}, query index of the rows)``."""
    query_index = data.query_groups()[1][rows]
    grades = data.relevance[rows]
    metrics = {name: relevance_metrics(values, grades, query_index, regression=name not in ("bm25", "cosine"),
                                       low=models.config.data.low)
               for name, values in models.score_rows(data, rows).items()}
    return metrics, query_index


def train_search(config: SearchConfig) -> SearchRun:
    from ecomjax.search.models import SearchModels
    from ecomjax.serve.search import SearchPipeline

    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / "config.yaml")
    data, splits = load_splits(config)
    print(f"relevance: {len(data)} pairs; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    models = SearchModels.fit(config, data, splits, workdir, timings)
    timings["total"] = time.perf_counter() - start
    start = time.perf_counter()
    pipeline = SearchPipeline(models, *data.catalogue())
    pipeline.save_index(workdir)
    timings["index"] = time.perf_counter() - start

    test = splits["test"]
    scores, query_index = score_models(models, data, test)
    metrics: dict[str, Any] = {"test_pairs": len(test), "test_queries": len(np.unique(query_index))}
    mean_grade = float(np.mean(data.relevance[np.concatenate([splits["base"], splits["stack"]])]))
    metrics["mean_predictor"] = {"rmse": float(np.sqrt(np.mean((data.relevance[test] - mean_grade) ** 2)))}
    metrics.update(scores)
    metrics["seconds"] = timings
    metrics["gbdt_features"] = list(models.feature_names)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return SearchRun(metrics, workdir)


def evaluate_search(workdir: str | Path, test_path: str | None = None) -> dict[str, Any]:
    """Score a trained workdir on ``test_path`` (same format) or its own test split; writes
    ``WORKDIR/eval/metrics.json``."""
    from ecomjax.search.models import SearchModels

    workdir = Path(workdir)
    models = SearchModels.load(workdir)
    config = models.config
    if test_path:
        data = read_relevance(resolve_data_path(test_path), low=config.data.low, high=config.data.high)
        rows = np.arange(len(data))
    else:
        data, splits = load_splits(config)
        rows = splits["test"]
    scores, query_index = score_models(models, data, rows)
    metrics: dict[str, Any] = {"source": str(test_path or f"{config.data.path} (test split)"),
                               "pairs": len(rows), "queries": len(np.unique(query_index)), **scores}
    out = workdir / "eval"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
