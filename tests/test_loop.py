"""The one loop, driven by a toy stage: it keeps the best validation epoch, stops early, refuses
NaN, names a batch that does not fit, resumes, and calls its callbacks in order."""

from __future__ import annotations

import dataclasses
import json

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecomjax.config import RunConfig, TrainConfig
from ecomjax.tasks.base import Stage
from ecomjax.train.callbacks import Callback
from ecomjax.train.loop import NonFiniteLossError, Trainer
from ecomjax.train.sharding import make_mesh

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 2)).astype(np.float32)
Y = X @ np.array([[1.0], [-2.0]], np.float32)


class LinearStage(Stage):
    """Least squares on 64 rows; validation reports a scripted score per epoch."""

    name = "model"
    monitor = "score"

    def __init__(self, train: TrainConfig, scores: list[float], rows: int = 64):
        self.train, self.scores, self.rows = train, scores, rows
        self.seen: list[float] = []

    def build(self) -> nnx.Module:
        return nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    def batches(self, epoch: int):
        size = self.train.batch_size
        order = np.random.default_rng(epoch).permutation(self.rows)
        return grain.MapDataset.range(self.rows // size).map(
            lambda s: {"x": X[order[s * size:(s + 1) * size]], "y": Y[order[s * size:(s + 1) * size]]})

    def loss(self, model, batch, rng):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}

    def evaluate(self, model, split):
        self.seen.append(float(model.kernel[...].sum()))  # which parameters each evaluation saw
        return {"score": self.scores[len(self.seen) - 1]}


class Recorder(Callback):
    def __init__(self):
        self.calls: list[tuple] = []

    def on_stage_start(self, stage, total_steps):
        self.calls.append(("start", stage, total_steps))

    def on_step(self, stage, record):
        self.calls.append(("step", record["step"]))

    def on_eval(self, stage, epoch, step, metrics):
        self.calls.append(("eval", epoch, metrics["score"]))

    def on_stage_end(self, stage, summary):
        self.calls.append(("end", summary["best_epoch"], summary["stop_reason"]))


def _trainer(tmp_path, callbacks=()):
    config = RunConfig(workdir=str(tmp_path))
    return Trainer(config, tmp_path, make_mesh(config.mesh), callbacks)


def _train_config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(epochs=6, batch_size=16, learning_rate=5e-2, warmup_steps=0,
                                           early_stopping_patience=3, progress=False), **changes)


def test_the_loop_keeps_the_best_epoch_and_stops_early(tmp_path):
    stage = LinearStage(_train_config(), [0.1, 0.5, 0.9, 0.4, 0.3, 0.2])
    recorder = Recorder()
    trained = _trainer(tmp_path, [recorder]).fit(stage)
    s = trained.summary
    assert (s["best_epoch"], s["epochs_run"], s["stop_reason"]) == (3, 6, "early_stopping")
    np.testing.assert_allclose(float(trained.model.kernel[...].sum()), stage.seen[2], rtol=1e-6)  # epoch 3's
    assert recorder.calls[0] == ("start", "model", 24) and recorder.calls[-1] == ("end", 3, "early_stopping")
    assert [c for c in recorder.calls if c[0] == "eval"] == [("eval", e + 1, v) for e, v in
                                                               enumerate([0.1, 0.5, 0.9, 0.4, 0.3, 0.2])]
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(1, 25))
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 25))
    # lower is better: the kept epoch is the lowest
    low = LinearStage(_train_config(epochs=3), [0.3, 0.1, 0.2])
    low.higher_is_better = False
    assert _trainer(tmp_path / "low").fit(low).summary["best_epoch"] == 2


def test_the_loop_refuses_nan_and_names_what_does_not_fit(tmp_path):
    with pytest.raises(FloatingPointError, match="model: validation score is nan after epoch 1"):
        _trainer(tmp_path / "a").fit(LinearStage(_train_config(), [float("nan")] * 6))
    with pytest.raises(NonFiniteLossError, match=r"model: loss is (nan|inf) at step \d+ \(epoch 1\)"):
        _trainer(tmp_path / "b").fit(LinearStage(_train_config(learning_rate=1e30, grad_clip_norm=0.0), [0.0] * 6))
    with pytest.raises(ValueError, match=r"fewer training examples than train.batch_size=16"):
        _trainer(tmp_path / "c").fit(LinearStage(_train_config(), [0.0] * 6, rows=8))


def test_a_finished_stage_is_restored_not_retrained(tmp_path):
    first = _trainer(tmp_path).fit(LinearStage(_train_config(), [0.1, 0.5, 0.9, 0.4, 0.3, 0.2]))
    again = LinearStage(_train_config(), [0.0] * 6)
    second = _trainer(tmp_path).fit(again)
    assert again.seen == [] and second.summary["best_epoch"] == 3  # no evaluation ran: nothing trained
    np.testing.assert_array_equal(np.asarray(second.model.kernel[...]), np.asarray(first.model.kernel[...]))
