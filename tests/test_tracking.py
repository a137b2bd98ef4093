"""``train.loggers``: the TensorBoard event files a run writes hold exactly what its
``history.jsonl`` holds (read back with TensorBoard's own reader), also across an interrupted and
resumed run; a misspelt logger or a missing tracker package fails at the start, naming the key."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

import ecomjax
from ecomjax.config import ConfigError, load_config
from ecomjax.train.callbacks import Callback
from ecomjax.train.history import read_history
from ecomjax.train.tracking import check_trackers, scalars

QUICKSTART = "configs/quickstart.yaml"
TINY = {
    "data.synthetic.num_users": 300, "data.synthetic.num_items": 120, "data.synthetic.num_categories": 8,
    "data.max_len": 12, "model.hidden_size": 16, "model.ffn_size": 32, "model.num_layers": 1,
    "train.batch_size": 8, "train.epochs": 2, "train.warmup_steps": 5, "train.progress": False,
    "eval.batch_size": 128, "eval.sampled_negatives": 20,
}


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run directory, ``tag -> [(step, value)]``, as TensorBoard loads it."""
    accumulator = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep them all
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _f32(value: float) -> float:
    return float(np.float32(value))  # an event holds a float32


def _expected(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the event files must hold, from ``history.jsonl``: each step's numbers under
    ``train/``, each evaluation's under ``valid/``."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        tags = scalars(record["valid"], "valid") if "valid" in record else {
            f"train/{k}": v for k, v in record.items() if k not in ("stage", "step", "epoch")}
        for tag, value in tags.items():
            expected.setdefault(tag, []).append((record["step"], _f32(value)))
    return expected


def test_tensorboard_events_hold_the_history(tmp_path):
    run = ecomjax.train(QUICKSTART, overrides={**TINY, "workdir": str(tmp_path),
                                               "train.loggers": ["jsonl", "tensorboard"]})
    history = read_history(tmp_path / "history.jsonl")
    events = _events(tmp_path / "tensorboard" / "model")
    expected = _expected(history)
    assert {"train/loss", "train/lr", "train/grad_norm", "valid/ndcg@10", "valid/sampled/ndcg@10"} <= set(expected)
    steps = run.metrics["steps"]
    assert [s for s, _ in events["train/loss"]] == list(range(1, steps + 1))
    for tag, points in expected.items():
        assert events[tag] == points, tag
    evals = [r for r in history if "valid" in r]
    assert [s for s, _ in events["valid/ndcg@10"]] == [r["step"] for r in evals] and len(evals) == 2
    assert events["summary/steps"] == [(steps, steps)]
    assert events["summary/best_epoch"] == [(steps, run.metrics["best_epoch"])]
    summary_tags = {t for t in events if t.startswith("summary/")}
    assert set(events) == set(expected) | summary_tags  # nothing that history.jsonl does not hold


class _Crash(Callback):
    """Fails the run after ``step``: the last checkpoint is older, as after a killed process."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, stage, record):
        if record["step"] == self.step:
            raise RuntimeError("crash")


def test_a_resumed_run_keeps_writing_and_a_restarted_one_starts_over(tmp_path):
    common = {**TINY, "workdir": str(tmp_path), "train.loggers": ["tensorboard"],  # jsonl is implied
              "train.checkpoint_every_steps": 7}
    logdir = tmp_path / "tensorboard" / "model"
    for crash in (3, 17):  # no checkpoint yet: the next start is afresh; then a checkpoint at 14
        with pytest.raises(RuntimeError, match="crash"):
            ecomjax.train(QUICKSTART, callbacks=[_Crash(crash)], overrides=common)
        assert len(list(logdir.iterdir())) == 1
        assert [s for s, _ in _events(logdir)["train/loss"]] == list(range(1, crash + 1))
    run = ecomjax.train(QUICKSTART, overrides=common)
    assert len(list(logdir.iterdir())) == 2  # the resumed run appended a file of its own
    events = _events(logdir)
    assert [s for s, _ in events["train/loss"]] == list(range(1, run.metrics["steps"] + 1))  # 15-17 once
    for tag, points in _expected(read_history(tmp_path / "history.jsonl")).items():
        assert events[tag] == points, tag


def test_an_unknown_or_repeated_logger_fails_at_config_load():
    assert load_config(QUICKSTART).train.loggers == ["jsonl"]
    with pytest.raises(ConfigError, match=r"train\.loggers\[1\]: 'tensorbord' is not allowed; allowed values: "
                                          r"\['jsonl', 'tensorboard', 'wandb'\]"):
        load_config(QUICKSTART, {"train.loggers": ["jsonl", "tensorbord"]})
    with pytest.raises(ConfigError, match=r"train\.loggers: .* each logger once"):
        load_config(QUICKSTART, ["train.loggers=[tensorboard,tensorboard]"])


@pytest.mark.parametrize("package", ["wandb", "tensorboardX"])
def test_a_missing_tracker_package_fails_at_the_start(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import wandb` raises ImportError
    logger = "wandb" if package == "wandb" else "tensorboard"
    with pytest.raises(ConfigError, match=rf"^train\.loggers: '{logger}' needs the {package} package: "
                                          rf"pip install {package} \(or leave {logger} out of train\.loggers\)$"):
        ecomjax.train(QUICKSTART, overrides={**TINY, "workdir": str(tmp_path), "train.loggers": [logger]})
    assert not (tmp_path / "history.jsonl").exists()  # nothing was trained


def test_the_missing_package_error_names_the_stage_key(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    config = load_config("configs/search_homedepot.yaml", {"cross_encoder.train.loggers": ["wandb"]})
    check_trackers(load_config("configs/search_homedepot.yaml"))  # nothing asked for: nothing to import
    with pytest.raises(ConfigError, match=r"^cross_encoder\.train\.loggers: 'wandb' needs .* pip install wandb"):
        check_trackers(config)


def test_scalars_keep_the_numbers_of_a_record():
    record = {"stop_reason": "epochs", "steps": 12, "flops_per_step": None, "ok": True,
              "valid_curve": [{"epoch": 1}], "sampled": {"hr@10": np.float32(0.5)}, "users": np.int64(3)}
    assert scalars(record, "summary") == {"summary/steps": 12.0, "summary/sampled/hr@10": 0.5,
                                          "summary/users": 3.0}
    assert json.dumps(scalars({"loss": 1.5, "step": 3}, "train", skip=("step",))) == '{"train/loss": 1.5}'
