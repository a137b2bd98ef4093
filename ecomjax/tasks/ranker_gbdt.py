"""The gradient-boosted-trees baseline of the ranker: LightGBM per head, same features, same splits.

A non-gradient step of a ranker run (``ecomjax.tasks.ranker``): fitted after the neural stages,
saved as LightGBM text models under ``WORKDIR/gbdt`` (with ``info.json``), and read back from
there when the run reports or is evaluated again.

Trees get the same information as the neural ranker, in the form trees take: categorical fields
as LightGBM categorical features (ids, optimal split over categories), numeric fields as they
are, and a sequence field as counts of each id in the sequence (the bag the neural model mean-
pools; for a vocabulary over ``MAX_BAG`` ids, the most recent id and the length instead, said in
the result's ``features`` note). Heads follow the funnel: click on every impression, pCVR on
clicked impressions (where its label exists), pCTCVR directly on every impression, log dwell
on clicked ones. Each booster stops early on the validation rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from ecomjax.data.schema import ImpressionData
from ecomjax.eval.satisfaction import Predictions

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
             categorical: list[int], leaves: int, rounds: int, seed: int) -> lgb.Booster:
    params = {"objective": objective, "learning_rate": 0.05, "num_leaves": leaves,
              "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
              "cat_smooth": 10, "verbose": -1, "seed": seed, "num_threads": 0,
              "deterministic": True, "force_col_wise": True}  # the same trees on a rerun (resume)
    train = lgb.Dataset(x, y, feature_name=names, categorical_feature=categorical, free_raw_data=False)
    valid = lgb.Dataset(xv, yv, reference=train)
    return lgb.train(params, train, rounds, valid_sets=[valid], callbacks=[lgb.early_stopping(50, verbose=False)])


def fit_gbdt_heads(data: ImpressionData, splits: dict[str, np.ndarray], tasks: tuple[str, ...], *,
                   leaves: int, rounds: int, seed: int) -> tuple[dict[str, lgb.Booster], dict[str, Any]]:
    """One booster per head, early-stopped on the validation rows: click on every impression,
    pCVR on clicked ones (where its label exists), pCTCVR directly, log dwell on clicked ones."""
    x, names, categorical, notes = tree_features(data)
    tr, va = splits["train"], splits["valid"]
    start = time.perf_counter()
    click = data.click
    trc, vac = tr[click[tr] > 0], va[click[va] > 0]
    fit = {"leaves": leaves, "rounds": rounds, "seed": seed}
    boosters = {"click": _booster("binary", x[tr], click[tr], x[va], click[va], names, categorical, **fit)}
    if "purchase" in tasks:
        boosters["cvr"] = _booster("binary", x[trc], data.purchase[trc], x[vac], data.purchase[vac], names,
                                   categorical, **fit)
        boosters["ctcvr"] = _booster("binary", x[tr], data.purchase[tr], x[va], data.purchase[va], names,
                                     categorical, **fit)
    info: dict[str, Any] = {}
    if "dwell" in tasks:
        dwell = boosters["dwell"] = _booster("regression", x[trc], np.log(data.dwell[trc]), x[vac],
                                             np.log(data.dwell[vac]), names, categorical, **fit)
        info["dwell_sigma"] = float(np.std(np.log(data.dwell[trc]) - dwell.predict(x[trc], num_iteration=dwell.best_iteration)))
    info.update({"train_seconds": time.perf_counter() - start, "features": notes,
                 "rounds": {head: b.best_iteration for head, b in boosters.items()}})
    return boosters, info


def predict_gbdt(boosters: dict[str, lgb.Booster], info: dict[str, Any], data: ImpressionData,
                 rows: np.ndarray) -> Predictions:
    """The boosters' predictions for ``rows`` (click also as if shown first, when positions exist)."""
    x, names, _, _ = tree_features(data.take(rows))

    def predict(head: str, features: np.ndarray) -> np.ndarray:
        booster = boosters[head]
        return booster.predict(features, num_iteration=booster.best_iteration)

    pred = Predictions(click=predict("click", x), dwell_sigma=info.get("dwell_sigma", 0.0))
    if "position" in names:
        top = x.copy()
        top[:, names.index("position")] = 1
        pred.click_top = predict("click", top)
    if "cvr" in boosters:
        pred.cvr, pred.ctcvr = predict("cvr", x), predict("ctcvr", x)
    if "dwell" in boosters:
        pred.dwell_log = predict("dwell", x)
    return pred


def save_gbdt(boosters: dict[str, lgb.Booster], info: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for head, booster in boosters.items():  # LightGBM text models, one per head
        booster.save_model(str(directory / f"{head}.txt"), num_iteration=booster.best_iteration)
    (directory / "info.json").write_text(json.dumps(info, indent=1))  # last: marks the step done


def load_gbdt(directory: Path) -> tuple[dict[str, lgb.Booster], dict[str, Any]] | None:
    """The boosters a run saved, or None when the step has not finished."""
    if not (directory / "info.json").is_file():
        return None
    info = json.loads((directory / "info.json").read_text())
    boosters = {}
    for head in info["rounds"]:
        booster = lgb.Booster(model_file=str(directory / f"{head}.txt"))
        booster.best_iteration = -1  # the saved model holds exactly its best iterations
        boosters[head] = booster
    return boosters, info
