"""One trial, in its own process: an ordinary training run that reports to the study.

``python -m ecomjax.tuning.trial --storage URL --study NAME --trial-id ID --config FILE`` trains
the trial's config (its workdir is ``TUNE_DIR/trials/NNN``, resumable like any run) with a
callback that reports every validation evaluation of the main model to Optuna and stops the
run when the pruner says so; the finished trial is told COMPLETE (the objective at the kept
epoch) or PRUNED here, by the process that holds it. A trial process that dies tells nothing:
the tuner marks that trial FAIL and the study goes on.

A process of its own per trial is what makes ``--jobs`` safe and honest: a crash, an
out-of-memory kill or a stuck compilation takes one trial down, not the study, and each trial
gets its own share of the CPU cores (pinned before JAX starts) or its own accelerator.

Exit codes: 0 complete, 3 pruned, 2 a user error (e.g. a combination the config refuses), 130
interrupted (checkpoint saved; the tuner queues the trial again to resume it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULT_FILE = "trial.json"


class TrialPruned(Exception):
    """The pruner stopped this trial after an evaluation (the epoch's checkpoint is saved)."""


def _pin(cores: str | None) -> None:
    """Give this process its share of the CPU cores before JAX (and its thread pools) start."""
    if cores:
        wanted = {int(c) for c in cores.split(",")}
        os.sched_setaffinity(0, wanted)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(len(wanted))


def _reporter(trial: Any, objective: str, workdir: Path):
    from ecomjax.train.callbacks import Callback

    class Reporter(Callback):
        """Reports the main (first) stage's validation ``objective`` at each evaluated epoch."""

        def __init__(self) -> None:
            self.stage: str | None = None
            self.epoch = 0
            self._replay()

        def _replay(self) -> None:
            # A trial queued again after an interruption resumes its run: the evaluations the run
            # made before are reported to this trial too, so the pruner sees the whole curve.
            history = workdir / "history.jsonl"
            if not history.is_file():
                return
            for line in history.read_text(encoding="utf-8").splitlines():
                record = json.loads(line) if line.strip() else {}
                if "valid" not in record:
                    continue
                self.stage = self.stage or record["stage"]
                if record["stage"] == self.stage and objective in record["valid"]:
                    trial.report(float(record["valid"][objective]), int(record["epoch"]))
                    self.epoch = int(record["epoch"])

        def on_stage_start(self, stage: str, total_steps: int) -> None:
            self.stage = self.stage or stage

        def on_eval(self, stage: str, epoch: int, step: int, metrics: dict[str, Any]) -> None:
            if stage != self.stage or objective not in metrics:  # e.g. a re-ranker scored after training
                return
            self.epoch = epoch
            trial.report(float(metrics[objective]), epoch)
            if trial.should_prune():
                raise TrialPruned(f"pruned after epoch {epoch}")

    return Reporter()


def _quiet(section: Any) -> None:
    """No progress bars in a trial's log: every ``train`` section (a task may have several)."""
    import dataclasses

    from ecomjax.config import TrainConfig

    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, TrainConfig):
            value.progress = False
        elif dataclasses.is_dataclass(value):
            _quiet(value)


def run_trial(storage_url: str, study_name: str, trial_id: int, config_path: Path, pruner: dict[str, Any]) -> int:
    import optuna

    from ecomjax.config import load_config
    from ecomjax.tasks import task_class
    from ecomjax.train.loop import train
    from ecomjax.tuning.study import PRUNED_EXIT, make_pruner, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url),
                              pruner=make_pruner(pruner), sampler=optuna.samplers.RandomSampler())
    trial = optuna.trial.Trial(study, trial_id)
    config = load_config(config_path)
    _quiet(config)
    task = task_class(config.task)(config)
    objective, _ = task.objective()
    workdir = Path(config.workdir)
    reporter = _reporter(trial, objective, workdir)
    start = time.perf_counter()
    result: dict[str, Any] = {"trial": trial.number, "objective": objective}
    try:
        run = train(config, callbacks=[reporter])
    except TrialPruned:
        result.update(state="pruned", epochs=reporter.epoch, seconds=time.perf_counter() - start)
        trial.set_user_attr("epochs", reporter.epoch)
        _write(workdir, result)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return PRUNED_EXIT
    value = task.objective_value(run.metrics)
    result.update(state="complete", value=value, epochs=run.metrics.get("epochs_run"),
                  best_epoch=run.metrics.get("best_epoch"), seconds=time.perf_counter() - start)
    trial.set_user_attr("epochs", run.metrics.get("epochs_run"))
    trial.set_user_attr("best_epoch", run.metrics.get("best_epoch"))
    _write(workdir, result)
    study.tell(trial, value)
    return 0


def evaluate_test(workdir: Path) -> int:
    """Score the test split of a finished trial (which trained with ``report_test: false``):
    ``WORKDIR/eval/metrics.json``. The tuner does this for the selected trial(s) only."""
    from ecomjax.run import evaluate

    evaluate(workdir, {"report_test": True})
    return 0


def _write(workdir: Path, result: dict[str, Any]) -> None:
    from ecomjax.train.workdir import write_json_atomically

    write_json_atomically(workdir / RESULT_FILE, result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecomjax.tuning.trial")
    parser.add_argument("--storage")
    parser.add_argument("--study")
    parser.add_argument("--trial-id", type=int)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--pruner", default="{}", help="the pruner's settings (JSON)")
    parser.add_argument("--cores", help="CPU cores this trial may use, comma-separated")
    parser.add_argument("--evaluate-test", type=Path, metavar="WORKDIR")
    args = parser.parse_args(argv)
    _pin(args.cores)
    from ecomjax.errors import EcomjaxError, one_line

    try:
        if args.evaluate_test:
            return evaluate_test(args.evaluate_test)
        return run_trial(args.storage, args.study, args.trial_id, args.config, json.loads(args.pruner))
    except KeyboardInterrupt:
        return 130
    except EcomjaxError as error:
        print(f"ecomjax: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
