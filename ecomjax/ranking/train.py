"""Train the satisfaction ranker (``task: ranker``) and write a workdir.

Data flow (``RankerConfig``): impressions (synthetic with known truth, or Ali-CCP / AliExpress /
Criteo files) -> train / valid / test by request -> device arrays -> ``MultiTaskRanker``
trained by ``ecomjax.tasks.fit`` (AdamW, warm-up + cosine, best validation epoch kept, NaN loss
refused) -> predictions -> ``evaluate_predictions`` per head -> ``metrics.json``. Baselines on
the same splits when asked: LightGBM per head, and a CVR model trained on clicked impressions
only. On synthetic data the true probabilities are scored the same way (``bayes``), the
ceiling every model is measured against.

Writes ``config.yaml``, ``history.jsonl`` (one line per epoch), ``metrics.json``,
``params.npz`` and ``model.json`` (schema, tasks, dwell spread) so ``load_ranker`` can serve it,
and ``gbdt/{head}.txt`` (LightGBM models) when the baseline ran.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import save_config
from ecomjax.data.impressions import generate_impressions
from ecomjax.data.schema import FeatureSchema, ImpressionData, drop_fields, split_by_group
from ecomjax.eval.classification import log_loss
from ecomjax.models.ranker import MultiTaskRanker
from ecomjax.ranking.config import RankerConfig, TaskWeights
from ecomjax.ranking.evaluate import Predictions, evaluate_predictions, true_predictions
from ecomjax.ranking.losses import ranker_losses, weighted_total
from ecomjax.search.store import load_params, save_params
from ecomjax.tasks.fit import fit, map_row_batches


@dataclass
class RankerRun:
    metrics: dict[str, Any]
    model: MultiTaskRanker
    workdir: Path


def load_impressions(config: RankerConfig) -> tuple[ImpressionData, dict[str, np.ndarray]]:
    """All impressions and the row indices of train / valid / test."""
    cfg = config.data
    if cfg.source == "synthetic":
        data = generate_impressions(cfg.synthetic, cfg.impressions)
        splits = split_by_group(data, cfg.valid_fraction, cfg.test_fraction, config.seed)
    else:
        from ecomjax.data.ctr_files import read_ctr_splits

        data, splits = read_ctr_splits(cfg, config.seed)
    return (drop_fields(data, cfg.drop_fields) if cfg.drop_fields else data), splits


def heads_of(data: ImpressionData) -> tuple[str, ...]:
    """Click always; purchase and dwell where the data has them."""
    return ("click",) + (("purchase",) if data.purchase is not None else ()) + (
        ("dwell",) if data.dwell is not None else ())


def device_data(data: ImpressionData) -> dict[str, jax.Array]:
    clicked = data.click > 0
    log_dwell = np.zeros(len(data), np.float32)
    if data.dwell is not None:
        log_dwell[clicked] = np.log(data.dwell[clicked])
    purchase = data.purchase if data.purchase is not None else np.zeros(len(data), np.float32)
    return {"categorical": jnp.asarray(data.categorical), "numeric": jnp.asarray(data.numeric),
            "sequences": jnp.asarray(data.sequences), "click": jnp.asarray(data.click),
            "purchase": jnp.asarray(purchase), "log_dwell": jnp.asarray(log_dwell)}


def base_rates(data: ImpressionData, rows: np.ndarray, tasks: tuple[str, ...], cvr: str) -> dict[str, float]:
    """Initial head biases: logit of the training CTR / CVR, mean log dwell."""
    def logit(p: float) -> float:
        p = min(max(p, 1e-4), 1 - 1e-4)
        return float(np.log(p / (1 - p)))

    click = data.click[rows]
    bias = {"click": logit(float(click.mean()))}
    if "purchase" in tasks:
        bias["purchase"] = logit(float(data.purchase[rows].sum() / max(click.sum(), 1)))
    if "dwell" in tasks and click.sum():
        bias["dwell"] = float(np.log(data.dwell[rows][click > 0]).mean())
    return {t: bias[t] for t in tasks}


def build_ranker(config: RankerConfig, schema: FeatureSchema, tasks: tuple[str, ...],
                 initial_bias: dict[str, float] | None = None, seed: int | None = None) -> MultiTaskRanker:
    m = config.model
    return MultiTaskRanker(
        schema, tasks, interaction=m.interaction, embed_dim=m.embed_dim, attention_dim=m.attention_dim,
        attention_layers=m.attention_layers, attention_heads=m.attention_heads, cross_layers=m.cross_layers,
        cross_rank=m.cross_rank, deep=m.deep, sharing=m.sharing, experts=m.experts,
        expert_hidden=m.expert_hidden, tower_hidden=m.tower_hidden, dropout=m.dropout,
        field_dropout=m.field_dropout, target_attention=m.target_attention, first_order=m.first_order,
        pairwise=m.pairwise,
        initial_bias=initial_bias, rngs=nnx.Rngs(config.seed if seed is None else seed))


def _forward(model: MultiTaskRanker, data: dict, rows: jax.Array) -> dict[str, jax.Array]:
    return model(data["categorical"][rows], data["numeric"][rows], data["sequences"][rows])


def head_probabilities(outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Click / purchase logits -> probabilities; dwell stays the mean log seconds."""
    return {k: (jax.nn.sigmoid(v) if k != "dwell" else v) for k, v in outputs.items()}


@nnx.jit
def _predict_batch(model: MultiTaskRanker, data: dict, rows: jax.Array) -> dict[str, jax.Array]:
    return head_probabilities(_forward(model, data, rows))


def top_position(data: dict[str, jax.Array], schema: FeatureSchema) -> dict[str, jax.Array]:
    """The same impressions as if each were shown first (position-free satisfaction)."""
    if "position" not in [f.name for f in schema.categorical]:
        return data
    column = schema.index("position")
    return {**data, "categorical": data["categorical"].at[:, column].set(1)}


def predict(model: MultiTaskRanker, data: dict[str, jax.Array], schema: FeatureSchema, rows: np.ndarray,
            dwell_sigma: float = 0.0, batch_size: int = 4096, position_free: bool = True) -> Predictions:
    """Head probabilities of ``rows``; ``position_free`` also scores them as if shown first
    (``click_top``, what satisfaction ranking needs: a second pass, skipped for losses)."""
    out = map_row_batches(_predict_batch, model, data, rows, batch_size)
    position_free = position_free and "click" in out
    top = map_row_batches(_predict_batch, model, top_position(data, schema), rows, batch_size) if position_free else {}
    pred = Predictions(dwell_sigma=dwell_sigma)
    if "click" in out:
        pred.click = out["click"].astype(np.float64)
        pred.click_top = top["click"].astype(np.float64) if position_free else None
    if "purchase" in out:
        pred.cvr = out["purchase"].astype(np.float64)
        if pred.click is not None:
            pred.ctcvr = pred.click * pred.cvr
    if "dwell" in out:
        pred.dwell_log = out["dwell"].astype(np.float64)
    return pred


def validation_loss(pred: Predictions, data: ImpressionData, rows: np.ndarray, w: TaskWeights, cvr: str) -> float:
    """The training objective on held-out rows (the early-stopping criterion)."""
    click = data.click[rows]
    total = 0.0
    if pred.click is not None and w.click:
        total += w.click * log_loss(pred.click, click)
    if pred.cvr is not None and w.purchase:
        if cvr == "esmm" and pred.ctcvr is not None:
            total += w.purchase * log_loss(pred.ctcvr, data.purchase[rows])
        else:
            seen = click > 0
            total += w.purchase * log_loss(pred.cvr[seen], data.purchase[rows][seen])
    if pred.dwell_log is not None and w.dwell:
        seen = click > 0
        total += w.dwell * float(np.mean((pred.dwell_log[seen] - np.log(data.dwell[rows][seen])) ** 2))
    return total


def train_heads(config: RankerConfig, data: ImpressionData, device: dict[str, jax.Array],
                splits: dict[str, np.ndarray], tasks: tuple[str, ...],
                history_path: Path | None = None) -> tuple[MultiTaskRanker, dict[str, Any]]:
    """Train one ranker with ``tasks`` heads; returns it at its best validation epoch."""
    weights = {"click": config.loss.weights.click, "purchase": config.loss.weights.purchase,
               "dwell": config.loss.weights.dwell}
    cvr_mode = config.loss.cvr
    train_rows = splits["train"]
    if tasks == ("purchase",):  # a stand-alone CVR model: trained where the label exists
        cvr_mode = "clicked_only"
        train_rows = train_rows[data.click[train_rows] > 0]
    adapt = config.adapt
    adapting = bool(adapt.init_from) and tasks != ("purchase",)  # the clicked-only CVR baseline starts fresh
    if adapt.lora_rank and not adapt.init_from:
        raise ValueError("adapt.lora_rank trains adapters on a finished ranker: set adapt.init_from")
    if adapting:
        model = _adaptation_start(adapt.init_from, config, data.schema, tasks)
    else:
        model = build_ranker(config, data.schema, tasks, base_rates(data, train_rows, tasks, cvr_mode))

    def loss_fn(model, device, rows, key):
        batch = {k: v[rows] for k, v in device.items()}
        outputs = model(batch["categorical"], batch["numeric"], batch["sequences"], deterministic=False,
                        rngs=nnx.Rngs(dropout=key))
        return weighted_total(ranker_losses(outputs, batch, cvr_mode), weights)

    valid = splits["valid"]
    if tasks == ("purchase",):
        valid = valid[data.click[valid] > 0]

    def evaluate(model) -> float:
        return -validation_loss(predict(model, device, data.schema, valid, position_free=False), data, valid,
                                config.loss.weights, cvr_mode)

    if history_path is not None:
        history_path.write_text("")

    def log(record: dict[str, float]) -> None:
        if history_path is not None:
            with history_path.open("a") as f:
                f.write(json.dumps({"epoch": record["epoch"], "loss": record["loss"],
                                    "valid_loss": -record["valid"]}) + "\n")

    lora_info = None
    if adapting and adapt.lora_rank:  # adapters trained, merged: served (and saved) as the plain architecture
        from ecomjax.efficiency.lora import LoraConfig, train_merged

        lora = LoraConfig(adapt.lora_rank, adapt.lora_alpha, adapt.lora_targets, also_train=adapt.lora_also_train)
        model, result, counts = train_merged(
            model, lora, (device["categorical"][:2], device["numeric"][:2], device["sequences"][:2]),
            lambda adapted, trainable: fit(adapted, loss_fn, device, train_rows, evaluate, config.train,
                                           on_epoch=log, trainable=trainable),
            seed=config.seed)
        lora_info = {"rank": lora.rank, "alpha": lora.alpha, "trainable_params": counts["trainable"],
                     "total_params": counts["total"], "trainable_fraction": counts["fraction"]}
    else:
        result = fit(model, loss_fn, device, train_rows, evaluate, config.train, on_epoch=log)
    info = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "train_seconds": result.seconds,
            "valid_loss": -result.best_score, "train_rows": len(train_rows)}
    if adapting:
        info["adapted_from"] = str(adapt.init_from)
    if lora_info is not None:
        info["lora"] = lora_info
    return model, info


def _adaptation_start(source: str, config: RankerConfig, schema: FeatureSchema,
                      tasks: tuple[str, ...]) -> MultiTaskRanker:
    """``adapt.init_from``'s model, which must have this run's architecture (the workdir is
    reloaded from this run's config), read its fields and predict its heads."""
    if not (Path(source) / "params.npz").is_file():
        raise FileNotFoundError(f"adapt.init_from={source!r} is not a finished ranker workdir (no params.npz)")
    model, source_schema, source_config, _ = load_ranker(source)
    if source_config.model != config.model:
        differ = [k for k, v in dataclasses.asdict(config.model).items() if getattr(source_config.model, k) != v]
        raise ValueError(f"adapt.init_from={source!r} was built with other model settings ({', '.join(differ)}); "
                         "use its model section")
    if source_schema != schema:
        raise ValueError(f"adapt.init_from={source!r} reads other fields than this run's data "
                         f"({source_schema.to_dict()} vs {schema.to_dict()}); adapt on the same features")
    if tuple(model.tasks) != tasks:
        raise ValueError(f"adapt.init_from={source!r} predicts {list(model.tasks)}, this run {list(tasks)}")
    return model


def dwell_spread(pred: Predictions, data: ImpressionData, rows: np.ndarray) -> float:
    """Std of log dwell around the predicted mean on (clicked) training rows."""
    if pred.dwell_log is None or data.dwell is None:
        return 0.0
    seen = data.click[rows] > 0
    return float(np.std(np.log(data.dwell[rows][seen]) - pred.dwell_log[seen]))


def train_ranker(config: RankerConfig) -> RankerRun:
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / "config.yaml")
    data, splits = load_impressions(config)
    device = device_data(data)
    tasks = heads_of(data)
    test = splits["test"]
    dwell_noise = config.data.impressions.dwell_noise if data.truth else None

    model, info = train_heads(config, data, device, splits, tasks, workdir / "history.jsonl")
    sample = splits["train"][:200_000]
    sigma = dwell_spread(predict(model, device, data.schema, sample, position_free=False), data, sample)
    start = time.perf_counter()
    pred = predict(model, device, data.schema, test, sigma)
    predict_seconds = time.perf_counter() - start
    name = f"{config.model.interaction}_{config.model.sharing}_{config.loss.cvr}"
    metrics: dict[str, Any] = {
        "source": data.source, "model": name, "tasks": list(tasks),
        "rows": {k: len(v) for k, v in splits.items()},
        "test": evaluate_predictions(pred, data, test, config.satisfaction, dwell_noise),
        **info, "test_predict_seconds": predict_seconds,
        "protocol": {"split": "by request (whole lists on one side)", "seed": config.seed,
                     "satisfaction": config.satisfaction.__dict__,
                     "ndcg": "lists re-ranked by the satisfaction score at position 1; gains = true expected "
                             "satisfaction (synthetic) or observed click/purchase/dwell"},
    }
    if data.truth:
        metrics["bayes"] = evaluate_predictions(true_predictions(data, test, dwell_noise), data, test,
                                                config.satisfaction, dwell_noise)
    baselines: dict[str, Any] = {}
    if config.baselines.clicked_only_cvr and "purchase" in tasks:
        cvr_model, cvr_info = train_heads(config, data, device, splits, ("purchase",))
        cvr_pred = predict(cvr_model, device, data.schema, test)
        baselines["cvr_clicked_only"] = {**evaluate_predictions(cvr_pred, data, test, config.satisfaction), **cvr_info}
    if config.baselines.gbdt:
        from ecomjax.ranking.gbdt import train_gbdt_heads

        gbdt_pred, gbdt_info, boosters = train_gbdt_heads(data, splits, tasks, config)
        (workdir / "gbdt").mkdir(exist_ok=True)
        for head, booster in boosters.items():  # LightGBM text models, one per head
            booster.save_model(str(workdir / "gbdt" / f"{head}.txt"), num_iteration=booster.best_iteration)
        baselines["gbdt"] = {**evaluate_predictions(gbdt_pred, data, test, config.satisfaction, dwell_noise),
                             **gbdt_info}
    if baselines:
        metrics["baselines"] = baselines
    save_params(model, workdir / "params.npz")
    (workdir / "model.json").write_text(json.dumps({"schema": data.schema.to_dict(), "tasks": list(tasks),
                                                    "dwell_sigma": sigma}, indent=2))
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return RankerRun(metrics=metrics, model=model, workdir=workdir)


def load_ranker(workdir: str | Path) -> tuple[MultiTaskRanker, FeatureSchema, RankerConfig, float]:
    """(model, schema, config, dwell spread) of a trained workdir, ready to ``predict``."""
    from ecomjax.ranking.config import load_ranker_config

    workdir = Path(workdir)
    config = load_ranker_config(workdir / "config.yaml")
    meta = json.loads((workdir / "model.json").read_text())
    schema = FeatureSchema.from_dict(meta["schema"])
    model = build_ranker(config, schema, tuple(meta["tasks"]))
    return load_params(model, workdir / "params.npz"), schema, config, float(meta["dwell_sigma"])


def evaluate_ranker(workdir: str | Path) -> dict[str, Any]:
    """Re-score a trained workdir's model on its test split (data re-read or re-generated from
    the saved config) and write ``WORKDIR/eval/metrics.json``."""
    workdir = Path(workdir)
    model, schema, config, sigma = load_ranker(workdir)
    data, splits = load_impressions(config)
    if data.schema != schema:
        raise ValueError(f"{workdir}: the data's fields differ from the trained model's; was the file changed?")
    test = splits["test"]
    pred = predict(model, device_data(data), schema, test, sigma)
    dwell_noise = config.data.impressions.dwell_noise if data.truth else None
    metrics = {"test": evaluate_predictions(pred, data, test, config.satisfaction, dwell_noise),
               "rows": len(test), "source": data.source}
    (workdir / "eval").mkdir(exist_ok=True)
    (workdir / "eval" / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics
