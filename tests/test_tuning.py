"""Hyperparameter search: spaces checked like overrides, trials as resumable runs in their own
processes, pruning on the validation curve, parallel jobs sharing one SQLite study, a killed
tune resumed, a dead trial process failing only its trial, and a best config that reproduces
its trial exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from test_tasks_on_the_loop import TASKS, _quiet, tiny_run

import ecomjax
from ecomjax.config import ConfigError
from ecomjax.tuning.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent

# A next-item run of a few seconds: 3 epochs of SASRec on a small synthetic shop.
TINY = {
    "workdir": "unused", "seed": 0,
    "data": {"source": "synthetic", "max_len": 10,
             "synthetic": {"num_users": 300, "num_items": 120, "num_categories": 6}},
    "model": {"name": "sasrec", "hidden_size": 16, "num_layers": 1, "num_heads": 1, "ffn_size": 32,
              "dropout": 0.2, "attention_dropout": 0.2},
    "train": {"batch_size": 32, "epochs": 3, "learning_rate": 0.005, "warmup_steps": 5,
              "early_stopping_patience": 5},
    "eval": {"exclude_history": True, "sampled_negatives": 50},
}


def _write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    return _write(tmp_path / "tiny.yaml", TINY)


def _space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _study(tune_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=tune_dir.name, storage=f"sqlite:///{tune_dir / 'study.db'}")


def _tune_command(config: Path, space: Path, tune_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ecomjax", "tune", str(config), "--space", str(space), "--dir", str(tune_dir),
            *extra]


# --- the space ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "named"), [
    ("model.hiddn_size: {choice: [16, 32]}\n", "model.hiddn_size"),  # unknown key, like a bad override
    ("model.dropout: {uniform: [0.1, 1.5]}\n", "model.dropout"),  # a bound the schema refuses
    ("train.learning_rate: {log_uniform: [0, 0.1]}\n", "train.learning_rate"),  # log of 0
    ("train.learning_rate: {uniform: [0.1]}\n", "train.learning_rate"),  # not [low, high]
    ("model.num_layers: {int: [1, 2.5]}\n", "model.num_layers"),  # not an integer
    ("model.dropout: {uniform: [0.1, 0.3], when: {model.num_layers: 2}}\nmodel.num_layers: {int: [1, 2]}\n",
     "model.dropout.when"),  # a condition on a key listed later
    ("model.dropout: {uniform: [0.1, 0.3], normal: 1}\n", "model.dropout"),  # two distributions
])
def test_a_bad_space_entry_names_the_key(tmp_path, tiny, text, named):
    space = _space(tmp_path, text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        SearchSpace.read(space).check_against(tiny, {})


def test_the_cli_refuses_a_bad_space_key_in_one_line(tmp_path, tiny):
    space = _space(tmp_path, "model.hiddn_size: {choice: [16, 32]}\n")
    done = subprocess.run(_tune_command(tiny, space, tmp_path / "tune", "--trials", "2"), capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.hiddn_size" in lines[0], done.stderr
    assert not (tmp_path / "tune" / "trials").exists()  # refused before any trial


def test_conditional_keys_and_the_baseline(tmp_path, tiny):
    space = SearchSpace.read(_space(tmp_path, (
        "train.optimizer: {choice: [adamw, adagrad]}\n"
        "train.weight_decay: {choice: [0.0, 0.01], when: {train.optimizer: adamw}}\n"
        "model.dropout: {uniform: [0.1, 0.5], step: 0.1}\n")))
    space.check_against(tiny, {})
    study = optuna.create_study()
    study.enqueue_trial({"train.optimizer": "adagrad", "model.dropout": 0.3})
    assert space.suggest(study.ask()) == {"train.optimizer": "adagrad", "model.dropout": 0.3}  # no weight decay
    study.enqueue_trial({"train.optimizer": "adamw", "train.weight_decay": 0.01, "model.dropout": 0.3})
    assert space.suggest(study.ask())["train.weight_decay"] == 0.01
    assert space.baseline(tiny, {}) == {"train.optimizer": "adamw", "train.weight_decay": 0.0, "model.dropout": 0.2}
    assert SearchSpace.read(_space(tmp_path, "model.dropout: {uniform: [0.3, 0.5]}\n", "s2.yaml")).baseline(
        tiny, {}) is None  # the config's 0.2 lies outside: no baseline trial


@pytest.mark.parametrize(("config", "space"), [
    ("sasrec_beauty", "sasrec_beauty"), ("ranker_synthetic", "ranker_synthetic"), ("search_homedepot", "search_gbdt")])
def test_every_shipped_space_fits_its_config_and_holds_the_shipped_values(config, space):
    parsed = SearchSpace.read(ROOT / "configs" / "tune" / f"{space}.yaml")
    parsed.check_against(ROOT / "configs" / f"{config}.yaml", {})
    assert parsed.baseline(ROOT / "configs" / f"{config}.yaml", {}) is not None  # trial 0 = the shipped config


def test_samplers_that_do_not_fit_the_space_say_why(tmp_path, tiny):
    space = _space(tmp_path, "train.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}\nmodel.num_heads: {choice: [1]}\n")
    with pytest.raises(ConfigError, match=r"grid sampler .* train\.learning_rate is not"):
        ecomjax.tune(tiny, space, trials=1, tune_dir=tmp_path / "t1", sampler="grid", platform=("cpu", 1))
    with pytest.raises(ConfigError, match="CMA-ES needs at least two numeric keys"):
        ecomjax.tune(tiny, space, trials=1, tune_dir=tmp_path / "t2", sampler="cmaes", platform=("cpu", 1))


# --- every task as a trial ------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_a_trial_blind_to_test_and_scores_test_afterwards(task, tmp_path):
    config, overrides = tiny_run(task, tmp_path)
    overrides = {k: v for k, v in overrides.items() if "checkpoint_every_steps" not in k}
    if task == "relevance":
        overrides["cross_encoder.enabled"] = False  # the fast re-ranker's objective needs no cross-encoder
    workdir = tmp_path / "run"
    run = ecomjax.train(config, overrides={**_quiet(overrides), "report_test": False, "workdir": str(workdir)})
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert not set(run.task.test_keys) & set(metrics), sorted(metrics)

    def nested_test_parts(value, where=""):  # a baseline's or an ablation's test metrics leak as much
        if isinstance(value, dict):  # (a split's size under "test", an int, is no metric)
            for key, inner in value.items():
                test_metrics = key == "test" and isinstance(inner, dict)
                yield from ([f"{where}.{key}"] if test_metrics else nested_test_parts(inner, f"{where}.{key}"))

    assert not list(nested_test_parts(metrics)), list(nested_test_parts(metrics))
    name, _ = run.task.objective()
    assert math.isfinite(run.task.objective_value(metrics)), name
    scored = ecomjax.evaluate(workdir, report_test=True)
    assert set(run.task.test_keys) & set(scored)


# --- trials, pruning, parallel jobs -------------------------------------------------------------------


def test_pruning_stops_a_trial_worse_than_the_median_at_its_first_evaluation(tmp_path, tiny):
    space = _space(tmp_path, "train.learning_rate: {choice: [0.005, 1.0e-7]}\n")
    result = ecomjax.tune(tiny, space, trials=2, tune_dir=tmp_path / "tune", pruner="median", startup_trials=1,
                          warmup_epochs=0, enqueue=[{"train.learning_rate": 1e-7}], progress=False,
                          platform=("cpu", 1))
    rows = {r["number"]: r for r in result.report.rows}
    assert rows[0]["state"] == "COMPLETE" and rows[0]["baseline"] and rows[0]["epochs"] == 3
    assert rows[1]["params"] == {"train.learning_rate": 1e-7}
    assert rows[1]["state"] == "PRUNED" and rows[1]["epochs"] == 1  # the epoch it reached
    workdir = tmp_path / "tune" / rows[1]["workdir"]
    assert json.loads((workdir / "trial.json").read_text())["state"] == "pruned"
    # the pruner decided after the epoch's checkpoint was saved: the stopped run is resumable
    from ecomjax.train.checkpoint import RunCheckpoints

    checkpoints = RunCheckpoints(workdir / "checkpoints" / "model", read_only=True)
    try:
        assert checkpoints.latest_step() is not None and checkpoints.latest_step() > 0
    finally:
        checkpoints.close()


@pytest.mark.parametrize("pruner", ["hyperband", "asha"])
def test_hyperband_and_asha_prune_in_the_trial_processes(tmp_path, tiny, pruner):
    space = _space(tmp_path, "train.learning_rate: {choice: [0.005, 1.0e-7]}\n")
    result = ecomjax.tune(tiny, space, trials=2, tune_dir=tmp_path / "tune", pruner=pruner, warmup_epochs=1,
                          enqueue=[{"train.learning_rate": 1e-7}], progress=False, platform=("cpu", 1))
    assert {r["state"] for r in result.report.rows} <= {"COMPLETE", "PRUNED"}, result.report.rows
    # successive halving recorded its rungs from inside the trial processes (with two trials the
    # rungs are too small to prune: that the pruner ran is what is checked here)
    rungs = {k for t in _study(tmp_path / "tune").get_trials() for k in t.system_attrs if k.startswith("completed_rung")}
    assert rungs, "the pruner never ran in the trial processes"


def test_two_jobs_share_one_sqlite_study_and_the_best_config_reproduces_its_trial(tmp_path, tiny):
    space = _space(tmp_path, "train.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}\nmodel.dropout: "
                             "{uniform: [0.1, 0.4]}\n")
    result = ecomjax.tune(tiny, space, trials=4, jobs=2, tune_dir=tmp_path / "tune", sampler="random",
                          pruner="none", progress=False, platform=("cpu", 2))
    trials = _study(tmp_path / "tune").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workdirs = [t.user_attrs["workdir"] for t in trials]
    assert len(set(workdirs)) == 4
    for trial in trials:  # each trial's own run, told by its own process
        record = json.loads((tmp_path / "tune" / trial.user_attrs["workdir"] / "trial.json").read_text())
        assert record["trial"] == trial.number and record["value"] == trial.value
    cores = {line.split(" on ")[1].split(":")[0] for w in workdirs
             for line in (tmp_path / "tune" / w / "log.txt").read_text().splitlines() if line.startswith("--- trial")}
    assert cores == {"cores 0", "cores 1"}  # each job pinned to its own share
    # selection saw validation only: no trial's metrics.json has a test number; the best one's
    # test split was scored afterwards, for it alone
    for w in workdirs:
        assert "test" not in json.loads((tmp_path / "tune" / w / "metrics.json").read_text())
    best = result.report.best
    assert "ndcg@10" in best["test"]["test"]
    scored = [w for w in workdirs if (tmp_path / "tune" / w / "eval" / "metrics.json").is_file()]
    assert scored == [best["workdir"]]
    report = json.loads((tmp_path / "tune" / "report.json").read_text())
    assert len(report["trials"]) == 4 and report["best"]["number"] == best["number"]
    assert all({"params", "value", "epochs", "state", "seconds"} <= set(r) for r in report["trials"])
    for plot in ("optimization_history.png", "param_importances.png", "slice.png"):
        assert (tmp_path / "tune" / plot).stat().st_size > 1000, report["plots"]
    assert "| trial | state |" in (tmp_path / "tune" / "report.md").read_text()

    # best.yaml reproduces the best trial exactly (same seed, same program, the same core)
    log = (tmp_path / "tune" / best["workdir"] / "log.txt").read_text()
    core = int(log.split(" on cores ")[1].split(":")[0])
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "ecomjax", "train", str(tmp_path / "tune" / "best.yaml"),
                    f"workdir={again}", "train.progress=false"], check=True, cwd=ROOT, capture_output=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    metrics = json.loads((again / "metrics.json").read_text())
    curve = {p["epoch"]: p["ndcg@10"] for p in metrics["valid_curve"]}
    assert curve[metrics["best_epoch"]] == best["value"]
    assert metrics["test"] == best["test"]["test"]  # and the test split scored after the search

    # the same study resumed with another space would mix incomparable trials: refused
    other = _space(tmp_path, "train.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}\n", "other.yaml")
    with pytest.raises(ConfigError, match="another space"):
        ecomjax.tune(tiny, other, trials=5, tune_dir=tmp_path / "tune", progress=False, platform=("cpu", 2))


# --- processes that die ---------------------------------------------------------------------------


def _wait_for(condition, timeout: float = 240.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _epochs_logged(path: Path) -> list[int]:
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip() and '"valid"' in line]


def test_a_killed_tune_resumes_with_its_finished_trials_intact(tmp_path):
    config = _write(tmp_path / "slow.yaml", {**TINY, "train": {**TINY["train"], "epochs": 6}})
    space = _space(tmp_path, "train.learning_rate: {choice: [0.005, 0.004, 0.003]}\n")
    tune_dir = tmp_path / "tune"
    command = _tune_command(config, space, tune_dir, "--trials", "3", "--sampler", "grid", "--pruner", "none")
    tuner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tune_dir / "trials" / "000" / "trial.json").is_file()
                  and len(_epochs_logged(tune_dir / "trials" / "001" / "history.jsonl")) >= 2, what="trial 1 mid-way")
    finally:
        tuner.send_signal(signal.SIGKILL)
        tuner.wait()
    before = {t.number: t for t in _study(tune_dir).get_trials()}
    assert before[0].state == optuna.trial.TrialState.COMPLETE and before[1].state == optuna.trial.TrialState.RUNNING

    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    after = {t.number: t for t in _study(tune_dir).get_trials()}
    assert after[0].value == before[0].value and after[0].datetime_complete == before[0].datetime_complete
    assert after[1].state == optuna.trial.TrialState.FAIL and after[1].user_attrs["interrupted"]
    resumed = [t for t in after.values() if t.user_attrs.get("resumes_trial") == 1]
    assert len(resumed) == 1 and resumed[0].state == optuna.trial.TrialState.COMPLETE
    assert resumed[0].user_attrs["workdir"] == "trials/001" and resumed[0].params == before[1].params
    # the run resumed from its checkpoint: every epoch evaluated once, none redone from scratch
    assert _epochs_logged(tune_dir / "trials" / "001" / "history.jsonl") == [1, 2, 3, 4, 5, 6]
    counted = [t for t in after.values() if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 3  # the total asked for, across both runs of the command


def test_a_trial_process_that_dies_fails_its_trial_not_the_study(tmp_path, tiny):
    config = _write(tmp_path / "slow.yaml", {**TINY, "train": {**TINY["train"], "epochs": 6}})
    space = _space(tmp_path, "train.learning_rate: {choice: [0.005, 0.004]}\n")
    tune_dir = tmp_path / "tune"
    tuner = subprocess.Popen(_tune_command(config, space, tune_dir, "--trials", "2", "--sampler", "grid",
                                           "--pruner", "none"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)

    def running_pid():
        if not (tune_dir / "study.db").is_file() or not _epochs_logged(tune_dir / "trials" / "000" / "history.jsonl"):
            return None
        trials = _study(tune_dir).get_trials()
        return trials[0].user_attrs.get("pid") if trials else None

    os.kill(_wait_for(running_pid, what="trial 0 training"), signal.SIGKILL)  # e.g. the OOM killer
    _, stderr = tuner.communicate(timeout=600)
    assert tuner.returncode == 0, stderr
    trials = {t.number: t for t in _study(tune_dir).get_trials()}
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert "killed by signal 9" in trials[0].user_attrs["error"]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE
    report = json.loads((tune_dir / "report.json").read_text())
    assert [r["state"] for r in report["trials"]] == ["FAIL", "COMPLETE"]
