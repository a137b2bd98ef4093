"""The satisfaction ranker (``task: ranker``): click, purchase and dwell heads over impressions.

Data: impressions (synthetic with known truth, or Ali-CCP / AliExpress / Criteo files) split by
request into train / valid / test. The main stage (``model``) is the ``MultiTaskRanker`` with
ESMM or a clicked-only CVR head and a masked dwell loss, selected on the validation objective.
Baselines trained in the same run, on the same splits: a CVR model trained on clicked
impressions only (stage ``cvr_clicked_only``) and LightGBM per head (a non-gradient step, saved
under ``WORKDIR/gbdt``). On synthetic data the true probabilities are scored the same way
(``bayes``), the ceiling every model is measured against.

``model.json`` holds the feature schema and heads (what the model reads and predicts), so a
loaded run scores impressions with no data file; ``metrics.json`` the dwell spread used for
expected seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import DROPOUT, ConfigError, LoraSection, RunConfig, TrainConfig
from ecomjax.data.impressions import ImpressionConfig, generate_impressions
from ecomjax.data.schema import FeatureSchema, ImpressionData, drop_fields, split_by_group
from ecomjax.data.synthetic import SyntheticConfig
from ecomjax.errors import InputError
from ecomjax.eval.classification import log_loss
from ecomjax.eval.satisfaction import (
    Predictions,
    SatisfactionConfig,
    evaluate_predictions,
    true_predictions,
)
from ecomjax.models.ranker import MultiTaskRanker, RankerModelConfig
from ecomjax.tasks.base import Stage, Task
from ecomjax.tasks.ranker_losses import ranker_losses, weighted_total

RANKER_LORA_TARGETS = "(interaction|experts|gates|towers|heads)/.*"  # the dense layers; tables stay frozen


@dataclass
class RankerDataConfig:
    # synthetic: impressions drawn from the synthetic shop (true probabilities known);
    # ali_ccp / aliexpress / criteo: files in those public sample formats (see ecomjax.data.ctr_files)
    source: Literal["synthetic", "ali_ccp", "aliexpress", "criteo"] = "synthetic"
    path: str | None = None  # training file; relative paths also tried under $ECOMJAX_DATA_DIR
    valid_path: str | None = None  # else a share of the training requests
    test_path: str | None = None  # else a share of the training requests
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    # feature fields the models do not see (ablations, or a raw id that only memorises);
    # users and requests still group GAUC and NDCG
    drop_fields: list[str] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # the shop
    impressions: ImpressionConfig = field(default_factory=ImpressionConfig)

    def __post_init__(self) -> None:
        if self.source != "synthetic" and not self.path:
            raise ConfigError(f"data.source={self.source!r} needs data.path (the training file)")
        if not (0 < self.valid_fraction < 1 and 0 <= self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ConfigError(f"data.valid_fraction ({self.valid_fraction}) and data.test_fraction "
                              f"({self.test_fraction}) must be fractions summing to less than 1")


@dataclass
class TaskWeights:
    click: float = 1.0
    purchase: float = 1.0
    dwell: float = 0.2  # squared error of log seconds, on clicked impressions only


@dataclass
class RankerLossConfig:
    # esmm: purchase learnt as pCTCVR = pCTR x pCVR over every impression (Ma et al., SIGIR 2018);
    # clicked_only: pCVR learnt on clicked impressions only (the sample-selection-biased baseline)
    cvr: Literal["esmm", "clicked_only"] = "esmm"
    weights: TaskWeights = field(default_factory=TaskWeights)


@dataclass
class RankerEvalConfig:
    batch_size: int = 4096  # impressions scored per call

    RANGES: ClassVar = {"batch_size": (lambda v: v >= 1, "an integer >= 1")}


@dataclass
class RankerBaselines:
    gbdt: bool = True  # LightGBM per head on the same features and splits
    clicked_only_cvr: bool = True  # a separate CVR model trained on clicked impressions only
    gbdt_rounds: int = 2000
    gbdt_leaves: int = 63


@dataclass
class RankerEfficiency:
    # with train.init_from: adapters on a finished ranker's dense layers (a new market, a later
    # period); the embedding tables and the rest stay frozen
    lora: LoraSection = field(default_factory=lambda: LoraSection(targets=RANKER_LORA_TARGETS))


@dataclass
class RankerConfig(RunConfig):
    task: Literal["ranker"] = "ranker"
    workdir: str = "runs/ranker"
    data: RankerDataConfig = field(default_factory=RankerDataConfig)
    model: RankerModelConfig = field(default_factory=RankerModelConfig)
    loss: RankerLossConfig = field(default_factory=RankerLossConfig)
    satisfaction: SatisfactionConfig = field(default_factory=SatisfactionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=20, batch_size=1024, learning_rate=2e-3, weight_decay=1e-5, early_stopping_patience=3,
        warmup_fraction=0.05))
    eval: RankerEvalConfig = field(default_factory=RankerEvalConfig)
    baselines: RankerBaselines = field(default_factory=RankerBaselines)
    efficiency: RankerEfficiency = field(default_factory=RankerEfficiency)


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


def base_rates(data: ImpressionData, rows: np.ndarray, tasks: tuple[str, ...]) -> dict[str, float]:
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
    return {t: bias[t] for t in tasks if t in bias}


def host_columns(data: ImpressionData) -> dict[str, np.ndarray]:
    """The model inputs and labels of every impression as host arrays (batches gather rows)."""
    clicked = data.click > 0
    log_dwell = np.zeros(len(data), np.float32)
    if data.dwell is not None:
        log_dwell[clicked] = np.log(data.dwell[clicked])
    purchase = data.purchase if data.purchase is not None else np.zeros(len(data), np.float32)
    return {"categorical": data.categorical, "numeric": data.numeric, "sequences": data.sequences,
            "click": data.click, "purchase": purchase.astype(np.float32), "log_dwell": log_dwell}


def head_probabilities(outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Click / purchase logits -> probabilities; dwell stays the mean log seconds."""
    return {k: (jax.nn.sigmoid(v) if k != "dwell" else v) for k, v in outputs.items()}


def _heads(graphdef, state, categorical, numeric, sequences):
    return head_probabilities(nnx.merge(graphdef, state)(categorical, numeric, sequences))


_jitted_heads = jax.jit(_heads, static_argnums=(0,))


def predict(model: nnx.Module, data: ImpressionData, rows: np.ndarray, batch_size: int = 4096,
            position_free: bool = True, dwell_sigma: float = 0.0) -> Predictions:
    """Head probabilities of ``rows`` in fixed-size batches (the last padded: one compilation);
    ``position_free`` also scores them as if shown first (``click_top``, what satisfaction
    ranking needs: a second pass, skipped for losses)."""
    graphdef, state = nnx.split(model)
    has_position = "position" in [f.name for f in data.schema.categorical]
    column = data.schema.index("position") if has_position else None

    def run(top: bool) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            take = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)]) if len(rows) > batch_size else chunk
            categorical = data.categorical[take]
            if top:
                categorical = categorical.copy()
                categorical[:, column] = 1
            out = _jitted_heads(graphdef, state, categorical, data.numeric[take], data.sequences[take])
            for k, v in out.items():
                parts.setdefault(k, []).append(np.asarray(v, np.float64)[:len(chunk)])
        return {k: np.concatenate(v) for k, v in parts.items()}

    out = run(False)
    pred = Predictions(dwell_sigma=dwell_sigma)
    if "click" in out:
        pred.click = out["click"]
        pred.click_top = run(True)["click"] if position_free and has_position else None
    if "purchase" in out:
        pred.cvr = out["purchase"]
        if pred.click is not None:
            pred.ctcvr = pred.click * pred.cvr
    if "dwell" in out:
        pred.dwell_log = out["dwell"]
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


def dwell_spread(pred: Predictions, data: ImpressionData, rows: np.ndarray) -> float:
    """Std of log dwell around the predicted mean on (clicked) training rows."""
    if pred.dwell_log is None or data.dwell is None:
        return 0.0
    seen = data.click[rows] > 0
    return float(np.std(np.log(data.dwell[rows][seen]) - pred.dwell_log[seen]))


class RankerStage(Stage):
    """One ranker trained by the loop: the main model, or the clicked-only CVR baseline
    (``heads=("purchase",)``: trained and validated on clicked impressions only)."""

    def __init__(self, task: RankerTask, spec: dict[str, Any], name: str, heads: tuple[str, ...]):
        config = task.config
        self.task, self.config, self.name = task, config, name
        self.heads = heads
        self.schema = FeatureSchema.from_dict(spec["schema"])
        self.initial_bias = spec["initial_bias"].get(name, {})
        self.cvr_mode = "clicked_only" if heads == ("purchase",) else config.loss.cvr
        self.monitor, self.higher_is_better = "loss", False
        lora = config.efficiency.lora
        self.lora = None
        self.train = config.train
        if name == "model" and lora.rank:
            from ecomjax.efficiency.lora import LoraConfig

            if not config.train.init_from:
                raise InputError("efficiency.lora trains adapters on a finished ranker: set train.init_from")
            self.lora = LoraConfig(lora.rank, lora.alpha, lora.targets, also_train=lora.also_train)
            if lora.b_learning_rate_ratio != 1:
                self.train = dataclasses.replace(self.train, learning_rate_scales={
                    **self.train.learning_rate_scales, "_lora_b": lora.b_learning_rate_ratio})
        elif name != "model":  # the baseline starts fresh, never from the adapted run
            self.train = dataclasses.replace(self.train, init_from=None)
        if task.data is not None:
            rows = task.splits["train"]
            valid = task.splits["valid"]
            if heads == ("purchase",):
                rows, valid = rows[task.data.click[rows] > 0], valid[task.data.click[valid] > 0]
            self.rows, self.valid_rows = rows, valid

    def example_inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Two rows of zeros in the schema's shapes (what qwix runs the model on to find its layers)."""
        s = self.schema
        width = max([q.max_len for q in s.sequences], default=1)
        return (jnp.zeros((2, len(s.categorical)), jnp.int32), jnp.zeros((2, len(s.numeric)), jnp.float32),
                jnp.zeros((2, len(s.sequences), width), jnp.int32))

    def build_base(self) -> MultiTaskRanker:
        """The ranker without adapters."""
        return MultiTaskRanker.from_config(self.config.model, self.schema, self.heads, self.initial_bias,
                                           rngs=nnx.Rngs(self.config.seed))

    def build(self) -> nnx.Module:
        model = self.build_base()
        if self.lora is not None:
            from ecomjax.efficiency.lora import apply_lora

            model = apply_lora(model, self.lora, *self.example_inputs(), seed=self.config.seed)
        return model

    def trainable(self) -> nnx.filterlib.Filter:
        if self.lora is None:
            return nnx.Param
        from ecomjax.efficiency.lora import lora_trainable

        return lora_trainable(also_train=self.lora.also_train)

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.rows) // self.train.batch_size

    def batches(self, epoch: int):
        columns, size = self.task.columns, self.train.batch_size
        order = np.random.default_rng([self.config.seed, epoch, _index(self.name)]).permutation(self.rows)

        def batch(step: int) -> dict[str, np.ndarray]:
            rows = order[step * size:(step + 1) * size]
            return {k: v[rows] for k, v in columns.items()}

        return grain.MapDataset.range(self.steps_in_epoch(epoch)).map(batch)

    def loss(self, model, batch, rng):
        outputs = model(batch["categorical"], batch["numeric"], batch["sequences"], deterministic=False,
                        rngs=nnx.Rngs(dropout=rng))
        losses = ranker_losses(outputs, batch, self.cvr_mode)
        w = self.config.loss.weights
        return weighted_total(losses, {"click": w.click, "purchase": w.purchase, "dwell": w.dwell}), {
            f"loss_{name}": value for name, value in losses.items()}

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        rows = self.valid_rows if split == "valid" else self.task.splits[split]
        pred = predict(model, self.task.data, rows, self.config.eval.batch_size, position_free=False)
        return {"loss": validation_loss(pred, self.task.data, rows, self.config.loss.weights, self.cvr_mode)}


def _index(name: str) -> int:
    return sum(name.encode())


class RankerTask(Task):
    name = "ranker"
    Config = RankerConfig
    config: RankerConfig

    # the Bayes ceiling and the baselines are scored on the test lists too
    test_keys = ("test", "bayes", "baselines", "test_predict_seconds")

    def objective(self) -> tuple[str, bool]:
        return "loss", False  # the model's validation loss (the training objective), as its early stopping

    def __init__(self, config: RankerConfig):
        super().__init__(config)
        self.data: ImpressionData | None = None

    def describe_data(self) -> dict[str, Any]:
        data, splits = load_impressions(self.config)
        schema = data.schema
        return {"source": data.source, "impressions": len(data), "heads": list(heads_of(data)),
                "requests": len(np.unique(data.groups)), "rows": {k: len(v) for k, v in splits.items()},
                "click_rate": round(float(data.click.mean()), 4),
                "fields": {"categorical": [f.name for f in schema.categorical], "numeric": list(schema.numeric),
                           "sequences": [s.name for s in schema.sequences]}}

    def prepare(self) -> dict[str, Any]:
        self.data, self.splits = load_impressions(self.config)
        self.columns = host_columns(self.data)
        for name, rows in self.splits.items():
            if len(rows) == 0:
                raise InputError(f"the {name} split of {self.data.source} is empty; adjust data.*_fraction")
        heads = heads_of(self.data)
        train = self.splits["train"]
        bias = {"model": base_rates(self.data, train, heads)}
        if self._with_cvr_baseline(heads):
            bias["cvr_clicked_only"] = base_rates(self.data, train[self.data.click[train] > 0], ("purchase",))
        return {"schema": self.data.schema.to_dict(), "tasks": list(heads), "initial_bias": bias}

    def _with_cvr_baseline(self, heads) -> bool:
        return self.config.baselines.clicked_only_cvr and "purchase" in heads

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        heads = tuple(spec["tasks"])
        stages: list[Stage] = [RankerStage(self, spec, "model", heads)]
        if "cvr_clicked_only" in spec["initial_bias"]:
            stages.append(RankerStage(self, spec, "cvr_clicked_only", ("purchase",)))
        return stages

    def run(self, trainer, spec: dict[str, Any]) -> dict[str, Any]:
        from ecomjax.tasks.ranker_gbdt import fit_gbdt_heads, load_gbdt, save_gbdt

        models = {stage.name: trainer.fit(stage).model for stage in self.stages(spec)}
        if self.config.baselines.gbdt:
            directory = self.workdir / "gbdt"
            if not (trainer.resume and load_gbdt(directory)):  # a finished step is not redone on resume
                b = self.config.baselines
                boosters, info = fit_gbdt_heads(self.data, self.splits, tuple(spec["tasks"]), leaves=b.gbdt_leaves,
                                                rounds=b.gbdt_rounds, seed=self.config.seed)
                if trainer.primary:
                    save_gbdt(boosters, info, directory)
        return self.report(models)

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        from ecomjax.tasks.ranker_gbdt import load_gbdt, predict_gbdt

        config, data, splits = self.config, self.data, self.splits
        model = models["model"]
        identity = {"source": data.source, "model": f"{config.model.interaction}_{config.model.sharing}_{config.loss.cvr}",
                    "tasks": list(model.tasks), "rows": {k: len(v) for k, v in splits.items()}}
        if not config.report_test:  # a hyperparameter trial: nothing is scored on the test lists
            return identity
        test = splits["test"]
        dwell_noise = config.data.impressions.dwell_noise if data.truth else None
        sample = splits["train"][:200_000]
        sigma = dwell_spread(predict(model, data, sample, config.eval.batch_size, position_free=False), data, sample)
        start = time.perf_counter()
        pred = predict(model, data, test, config.eval.batch_size, dwell_sigma=sigma)
        predict_seconds = time.perf_counter() - start
        metrics: dict[str, Any] = {
            **identity,
            "test": evaluate_predictions(pred, data, test, config.satisfaction, dwell_noise),
            "dwell_sigma": sigma, "test_predict_seconds": predict_seconds,
            "protocol": {"split": "by request (whole lists on one side)", "seed": config.seed,
                         "satisfaction": dataclasses.asdict(config.satisfaction),
                         "selection": "lowest validation loss (the training objective) over epochs",
                         "ndcg": "lists re-ranked by the satisfaction score at position 1; gains = true expected "
                                 "satisfaction (synthetic) or observed click/purchase/dwell"},
        }
        if data.truth:
            metrics["bayes"] = evaluate_predictions(true_predictions(data, test, dwell_noise), data, test,
                                                    config.satisfaction, dwell_noise)
        baselines: dict[str, Any] = {}
        if "cvr_clicked_only" in models:
            cvr_pred = predict(models["cvr_clicked_only"], data, test, config.eval.batch_size)
            baselines["cvr_clicked_only"] = evaluate_predictions(cvr_pred, data, test, config.satisfaction)
        saved = load_gbdt(self.workdir / "gbdt") if config.baselines.gbdt else None
        if saved is not None:
            boosters, info = saved
            baselines["gbdt"] = {**evaluate_predictions(predict_gbdt(boosters, info, data, test), data, test,
                                                        config.satisfaction, dwell_noise), **info}
        if baselines:
            metrics["baselines"] = baselines
        if config.efficiency.lora.rank:
            from ecomjax.efficiency.lora import lora_trainable, parameter_counts

            counts = parameter_counts(model, lora_trainable(also_train=config.efficiency.lora.also_train))
            metrics["lora"] = {"rank": config.efficiency.lora.rank, "alpha": config.efficiency.lora.alpha,
                               "adapted_from": config.train.init_from, "trainable_params": counts["trainable"],
                               "total_params": counts["total"], "trainable_fraction": counts["fraction"]}
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        """One line per model: click AUC / GAUC / log loss, pCTCVR AUC, pCVR AUC, dwell RMSE, NDCG@10."""
        rows = [("model", metrics["test"]), *(((name, m) for name, m in metrics.get("baselines", {}).items())),
                *([("bayes (truth)", metrics["bayes"])] if "bayes" in metrics else [])]
        lines = [f"{'':16s} {'ctr auc':>8s} {'gauc':>7s} {'logloss':>8s} {'ctcvr auc':>9s} {'cvr auc*':>8s} "
                 f"{'dwell rmse':>10s} {'ndcg@10':>8s}"]

        def cell(m: dict, head: str, key: str, width: int) -> str:
            value = m.get(head, {}).get(key)
            return f"{value:{width}.4f}" if isinstance(value, float) else f"{'-':>{width}s}"

        for name, m in rows:
            ndcg_key = "ndcg@10_true" if "ndcg@10_true" in m.get("satisfaction", {}) else "ndcg@10_observed"
            cvr_key = "auc_all" if "auc_all" in m.get("cvr", {}) else "auc_clicked"
            lines.append(f"{(metrics.get('model', name) if name == 'model' else name):16s} "
                         f"{cell(m, 'click', 'auc', 8)} {cell(m, 'click', 'gauc', 7)} "
                         f"{cell(m, 'click', 'log_loss', 8)} {cell(m, 'purchase', 'auc', 9)} "
                         f"{cell(m, 'cvr', cvr_key, 8)} {cell(m, 'dwell', 'rmse_log', 10)} "
                         f"{cell(m, 'satisfaction', ndcg_key, 8)}")
        lines.append("* cvr auc over all impressions against the counterfactual label where known, else on clicks")
        if "train_seconds" in metrics:
            lines.append(f"train {metrics['train_seconds']:.1f}s, best epoch {metrics.get('best_epoch')} "
                         f"of {metrics.get('epochs_run')}")
        return "\n".join(lines)

    def inference(self, run) -> Any:
        from ecomjax.serve.ranker import RankerScorer

        stage = self.stages(run.spec)[0]
        model = run.model
        if stage.lora is not None:  # served merged: the plain ranker's cost
            from ecomjax.efficiency.lora import merged_into_base

            model = merged_into_base(model, stage.build_base, stage.lora)
        return RankerScorer(model, stage.schema, self.config.satisfaction,
                            float((run.metrics or {}).get("dwell_sigma", 0.0)))

    def artifacts(self) -> list[str]:
        return ["gbdt", "metrics.json"]


__all__ = ["DROPOUT", "RankerConfig", "RankerStage", "RankerTask", "load_impressions", "predict"]
