"""Evaluation of a satisfaction ranker's predictions, and of the ground truth as a ceiling.

Every model (neural heads, the GBDT baseline, the true probabilities of the synthetic world)
is turned into the same ``Predictions`` and scored by one function, so the table compares like
with like:

* click: AUC, per-user GAUC, log loss, calibration (relative bias, ECE);
* purchase: pCTCVR over every impression against ``purchase`` (AUC, log loss, calibration);
* CVR: pCVR on clicked impressions against ``purchase`` (what logs allow) and, on synthetic data,
  over *all* impressions against the counterfactual ``would_buy`` (what ESMM is about);
* dwell: RMSE of log seconds on clicked impressions;
* satisfaction: NDCG@10 of every list re-ranked by the satisfaction score, against the true
  expected satisfaction at the top position (synthetic) or the observed outcome (logs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecomjax.data.schema import ImpressionData
from ecomjax.eval import classification as cls
from ecomjax.eval.graded import mean_grouped_ndcg, rmse


@dataclass
class SatisfactionConfig:
    """Ranking score = click x pCTR + purchase x pCTCVR + dwell_minutes x pCTR x E[dwell] / 60."""

    click: float = 1.0
    purchase: float = 5.0
    dwell_minutes: float = 0.5


@dataclass
class Predictions:
    """Per-impression probabilities; ``*_top``: scored as if shown at the first position."""

    click: np.ndarray | None = None
    cvr: np.ndarray | None = None
    ctcvr: np.ndarray | None = None
    dwell_log: np.ndarray | None = None  # predicted mean log seconds
    click_top: np.ndarray | None = None
    dwell_sigma: float = 0.0  # spread of log dwell around its mean: E[seconds] = exp(mean + s^2 / 2)


def satisfaction_score(p_click: np.ndarray, p_cvr: np.ndarray | None, dwell_log: np.ndarray | None,
                       dwell_sigma: float, weights: SatisfactionConfig) -> np.ndarray:
    score = weights.click * p_click
    if p_cvr is not None:
        score = score + weights.purchase * p_click * p_cvr
    if dwell_log is not None:
        score = score + weights.dwell_minutes * p_click * np.exp(dwell_log + dwell_sigma ** 2 / 2) / 60.0
    return score


def observed_satisfaction(data: ImpressionData, rows: np.ndarray, weights: SatisfactionConfig) -> np.ndarray:
    gain = weights.click * data.click[rows].astype(np.float64)
    if data.purchase is not None:
        gain = gain + weights.purchase * data.purchase[rows]
    if data.dwell is not None:
        gain = gain + weights.dwell_minutes * data.dwell[rows] / 60.0
    return gain


def true_predictions(data: ImpressionData, rows: np.ndarray, dwell_noise: float) -> Predictions:
    """The generator's own probabilities: the best any model can score on these labels."""
    t = {k: v[rows] for k, v in data.truth.items()}
    return Predictions(click=t["p_click"], cvr=t["p_cvr"], ctcvr=t["p_click"] * t["p_cvr"],
                       dwell_log=t["dwell_mean"], click_top=t["p_click_top"], dwell_sigma=dwell_noise)


def evaluate_predictions(pred: Predictions, data: ImpressionData, rows: np.ndarray,
                         weights: SatisfactionConfig, dwell_noise: float | None = None) -> dict[str, dict[str, float]]:
    """Metrics per head over ``rows``; heads the predictions lack are left out."""
    click = data.click[rows]
    out: dict[str, dict[str, float]] = {}
    if pred.click is not None:
        g, used = cls.gauc(pred.click, click, data.users[rows])
        out["click"] = {"auc": cls.auc(pred.click, click), "gauc": g, "gauc_users": used,
                        "log_loss": cls.log_loss(pred.click, click),
                        "calibration": cls.calibration(pred.click, click),
                        "ece": cls.expected_calibration_error(pred.click, click)}
    if data.purchase is not None:
        purchase = data.purchase[rows]
        if pred.ctcvr is not None:
            out["purchase"] = {"auc": cls.auc(pred.ctcvr, purchase), "log_loss": cls.log_loss(pred.ctcvr, purchase),
                               "calibration": cls.calibration(pred.ctcvr, purchase)}
        if pred.cvr is not None:
            seen = click > 0
            cvr = {"auc_clicked": cls.auc(pred.cvr[seen], purchase[seen]),
                   "log_loss_clicked": cls.log_loss(pred.cvr[seen], purchase[seen])}
            if "would_buy" in data.truth:
                would = data.truth["would_buy"][rows]
                cvr.update(auc_all=cls.auc(pred.cvr, would), log_loss_all=cls.log_loss(pred.cvr, would),
                           calibration_all=cls.calibration(pred.cvr, would))
            out["cvr"] = cvr
    if data.dwell is not None and pred.dwell_log is not None:
        seen = click > 0
        out["dwell"] = {"rmse_log": rmse(pred.dwell_log[seen], np.log(data.dwell[rows][seen]))}
    if pred.click is not None:
        top = pred.click_top if pred.click_top is not None else pred.click
        score = satisfaction_score(top, pred.cvr, pred.dwell_log, pred.dwell_sigma, weights)
        sat = {}
        if data.truth:
            truth = true_predictions(data, rows, dwell_noise or 0.0)
            gains = satisfaction_score(truth.click_top, truth.cvr, truth.dwell_log, truth.dwell_sigma, weights)
            sat["ndcg@10_true"], _ = mean_grouped_ndcg(score, gains, data.groups[rows], 10)
        sat["ndcg@10_observed"], sat["lists_observed"] = mean_grouped_ndcg(
            score, observed_satisfaction(data, rows, weights), data.groups[rows], 10)
        out["satisfaction"] = sat
    return out
