"""The gradient-boosted-trees baseline of the ranker: LightGBM per head, same features, same splits.

Trees get the same information as the neural ranker, in the form trees take: categorical fields
as LightGBM categorical features (ids, optimal split over categories), numeric fields as they
are, and a sequence field as counts of each id in the sequence (the bag the neural model mean-
pools; for a vocabulary over ``MAX_BAG`` ids, the most recent id and the length instead, said in
the result's ``features`` note). Heads follow the funnel: click on every impression, pCVR on
clicked impressions (where its label exists), pCTCVR directly on every impression, log dwell
on clicked ones. Each booster stops early on the validation rows.
"""

from __future__ import annotations

import time
from typing import Any

import lightgbm as lgb
import numpy as np

from ecomjax.data.schema import ImpressionData
from ecomjax.ranking.config import RankerConfig
from ecomjax.ranking.evaluate import Predictions

MAX_BAG = 256


def tree_features(data: ImpressionData) -> tuple[np.ndarray, list[str], list[int], list[str]]:
    """(matrix, column names, categorical column indices, notes)."""
    schema = data.schema
    columns = [data.categorical.astype(np.float32), data.numeric]
    names = [f.name for f in schema.categorical] + list(schema.numeric)
    notes = []
    for i, seq in enumerate(schema.sequences):
        ids = data.sequences[:, i, : seq.max_len]
        if seq.vocab_size <= MAX_BAG:
            counts = np.zeros((len(data), seq.vocab_size - 1), np.float32)
            for t in range(ids.shape[1]):
                real = ids[:, t] > 0
                np.add.at(counts, (np.flatnonzero(real), ids[real, t] - 1), 1.0)
            columns.append(counts)
            names += [f"{seq.name}={v}" for v in range(1, seq.vocab_size)]
            notes.append(f"{seq.name}: counts of each of {seq.vocab_size - 1} ids")
        else:
            columns.append(np.stack([ids[:, 0], (ids > 0).sum(1)], axis=1).astype(np.float32))
            names += [f"{seq.name}_last", f"{seq.name}_length"]
            notes.append(f"{seq.name}: most recent id and length (vocabulary {seq.vocab_size} > {MAX_BAG})")
    return np.concatenate(columns, axis=1), names, list(range(len(schema.categorical))), notes


def _booster(objective: str, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, names: list[str],
             categorical: list[int], config: RankerConfig) -> lgb.Booster:
    params = {"objective": objective, "learning_rate": 0.05, "num_leaves": config.baselines.gbdt_leaves,
              "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
              "cat_smooth": 10, "verbose": -1, "seed": config.seed, "num_threads": 0}
    train = lgb.Dataset(x, y, feature_name=names, categorical_feature=categorical, free_raw_data=False)
    valid = lgb.Dataset(xv, yv, reference=train)
    return lgb.train(params, train, config.baselines.gbdt_rounds, valid_sets=[valid],
                     callbacks=[lgb.early_stopping(50, verbose=False)])


def train_gbdt_heads(data: ImpressionData, splits: dict[str, np.ndarray], tasks: tuple[str, ...],
                     config: RankerConfig) -> tuple[Predictions, dict[str, Any], dict[str, lgb.Booster]]:
    """Fit one booster per head; return test predictions, timing facts and the boosters."""
    x, names, categorical, notes = tree_features(data)
    tr, va, te = splits["train"], splits["valid"], splits["test"]
    start = time.perf_counter()
    rounds = {}
    boosters = {}
    pred = Predictions()
    click = data.click
    booster = _booster("binary", x[tr], click[tr], x[va], click[va], names, categorical, config)
    rounds["click"] = booster.best_iteration
    boosters["click"] = booster
    pred.click = booster.predict(x[te], num_iteration=booster.best_iteration)
    if "position" in names:
        top = x[te].copy()
        top[:, names.index("position")] = 1
        pred.click_top = booster.predict(top, num_iteration=booster.best_iteration)
    if "purchase" in tasks:
        trc, vac = tr[click[tr] > 0], va[click[va] > 0]
        cvr = _booster("binary", x[trc], data.purchase[trc], x[vac], data.purchase[vac], names, categorical, config)
        rounds["cvr"] = cvr.best_iteration
        boosters["cvr"] = cvr
        pred.cvr = cvr.predict(x[te], num_iteration=cvr.best_iteration)
        ctcvr = _booster("binary", x[tr], data.purchase[tr], x[va], data.purchase[va], names, categorical, config)
        rounds["ctcvr"] = ctcvr.best_iteration
        boosters["ctcvr"] = ctcvr
        pred.ctcvr = ctcvr.predict(x[te], num_iteration=ctcvr.best_iteration)
    if "dwell" in tasks:
        trc, vac = tr[click[tr] > 0], va[click[va] > 0]
        dwell = _booster("regression", x[trc], np.log(data.dwell[trc]), x[vac], np.log(data.dwell[vac]), names,
                         categorical, config)
        rounds["dwell"] = dwell.best_iteration
        boosters["dwell"] = dwell
        pred.dwell_log = dwell.predict(x[te], num_iteration=dwell.best_iteration)
        pred.dwell_sigma = float(np.std(np.log(data.dwell[trc]) - dwell.predict(x[trc], num_iteration=dwell.best_iteration)))
    return pred, {"train_seconds": time.perf_counter() - start, "rounds": rounds, "features": notes}, boosters
