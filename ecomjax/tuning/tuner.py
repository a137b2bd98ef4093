"""``ecomjax.tune``: a hyperparameter search over any task's config, on an Optuna study.

The tuner runs in the foreground and never starts JAX itself: it asks the study for a trial,
writes the trial's config (the base config, the trial's values, ``workdir:
TUNE_DIR/trials/NNN``, ``report_test: false``) and trains it in a child process
(``ecomjax.tuning.trial``), ``jobs`` at a time, each pinned to its share of the CPU cores or to
its accelerator. While a trial runs its tuner thread sends its heartbeat. A trial process that
dies fails that trial; the study goes on.

Stopping and resuming: ``trials`` counts the finished trials of the whole study, so running the
same command again after a kill continues to the same total. An interrupted trial (Ctrl-C, the
time budget, a killed tuner) is queued again with the same parameters and, since its workdir
holds its checkpoint, resumes where it stopped; the study database keeps every finished trial.

Selection is on validation only: trials train with ``report_test: false``, and the test split
is scored afterwards for the selected trial (and the next ``top - 1``) alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from ecomjax.config import ConfigError, config_tree, load_config, save_config
from ecomjax.errors import InputError
from ecomjax.tuning.devices import Slot, slots
from ecomjax.tuning.report import TuneReport, build_report, write_report
from ecomjax.tuning.space import SearchSpace
from ecomjax.tuning.study import (
    PRUNED_EXIT,
    default_storage,
    make_pruner,
    make_sampler,
    open_storage,
    pruner_settings,
    requeue,
)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class TuneResult:
    tune_dir: Path
    study: optuna.Study
    report: TuneReport

    @property
    def best(self) -> dict[str, Any] | None:
        return self.report.best


def tune(config: str | Path | None, space: str | Path, *, trials: int, jobs: int = 1,
         overrides: dict[str, Any] | None = None, tune_dir: str | Path | None = None,
         study_name: str | None = None, storage: str | None = None, sampler: str = "tpe",
         pruner: str = "median", startup_trials: int = 3, warmup_epochs: int = 0,
         timeout: float | None = None, seed: int = 0, top: int = 1, baseline: bool = True,
         trials_per_device: int = 1, enqueue: Sequence[dict[str, Any]] = (), progress: bool = True,
         platform: tuple[str, int] | None = None) -> TuneResult:
    """Search ``space`` (a YAML file of dotted keys) over ``config`` for ``trials`` finished
    trials (or until ``timeout`` seconds), ``jobs`` at a time; write ``TUNE_DIR/report.md``,
    ``report.json``, the plots and ``best.yaml``; return the study and the report.

    ``baseline`` queues the config's own values as the first trial (when they lie in the space),
    so the report says what tuning gained; ``enqueue`` gives more points of the space to try
    first (e.g. known good settings). ``pruner``: median (stop a trial below the median of
    earlier trials at the same epoch, after ``startup_trials`` finished and ``warmup_epochs``),
    hyperband, asha or none.
    """
    overrides = {k.replace("__", "."): v for k, v in (overrides or {}).items()}
    if trials < 1 or jobs < 1 or top < 1:
        raise InputError("--trials, --jobs and --top must be at least 1")
    space_def = SearchSpace.read(space)
    space_def.check_against(config, overrides)
    base = load_config(config, overrides)
    from ecomjax.tasks import task_class

    task = task_class(base.task)(base)
    try:
        objective, higher = task.objective()
    except NotImplementedError as error:
        raise ConfigError(f"{config}: {error}; it cannot be tuned") from None
    tune_dir = Path(tune_dir or Path(base.workdir).parent / f"{Path(base.workdir).name}_tune").absolute()
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage or default_storage(tune_dir)
    study_name = study_name or tune_dir.name
    max_epochs = _max_epochs(base)
    prune = pruner_settings(pruner, startup_trials, warmup_epochs, max_epochs)
    setup = {"config": str(Path(config).absolute()) if config else None, "overrides": overrides,
             "space": [d.__dict__ for d in space_def.dimensions], "fixed": space_def.fixed,
             "objective": objective, "direction": "maximize" if higher else "minimize"}
    setup = json.loads(json.dumps(setup, default=list))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(storage_url), study_name=study_name, load_if_exists=True,
                                direction=setup["direction"], sampler=make_sampler(sampler, space_def, seed),
                                pruner=make_pruner(prune))
    _check_setup(study, setup, storage_url)
    _take_over_dead(study)  # trials of a tuner killed on this machine: FAIL, queued again
    optuna.storages.fail_stale_trials(study)  # ... and of one elsewhere, once its heartbeats stop
    if not study.trials:  # a new study: the config's own values first, then the given points
        params = space_def.baseline(config, overrides) if baseline else None
        if params is not None:
            study.set_user_attr("baseline", params)  # the report marks the trial with these values
            if sampler != "grid":  # the grid holds the point already
                study.enqueue_trial(params)
        for point in enqueue:
            study.enqueue_trial(space_def.check_point(point))

    runner = _Runner(study, space_def, config, overrides, tune_dir, storage_url, study_name, prune, trials,
                     time.monotonic() + timeout if timeout else None, progress)
    interrupted = False
    try:
        runner.run(slots(jobs, trials_per_device, platform))
    except KeyboardInterrupt:
        interrupted = True
    report = build_report(study, space_def, objective, stopped="interrupted" if interrupted else
                          runner.stop_reason, elapsed=runner.elapsed)
    if not interrupted:
        for row in report.top(top):
            cores = study.trials[row["number"]].user_attrs.get("cores")
            row["test"] = _test_metrics(tune_dir / row["workdir"], row["number"], cores)
            if "error" not in row["test"]:
                row["test_summary"] = task.summary(row["test"])
        if report.best is not None:
            _write_best_config(config, overrides, report.best, tune_dir, study_name, objective)
    write_report(study, report, tune_dir)
    if interrupted:
        raise KeyboardInterrupt
    return TuneResult(tune_dir, study, report)


def _alive(pid: Any) -> bool:
    """Whether ``pid`` is a running ecomjax process (a reused pid of another program is not)."""
    try:
        return b"ecomjax" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, TypeError, ValueError):
        return False


def _take_over_dead(study: optuna.Study) -> None:
    """RUNNING trials whose tuner on this machine is gone (killed, crashed): wait for the trial
    process to finish saving (it got SIGTERM when its tuner died), then fail the trial and queue
    it again, so the next run of the same command resumes it at once instead of after the
    heartbeat grace period."""
    host = os.uname().nodename
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        tuner_host, _, tuner_pid = str(trial.user_attrs.get("tuner", "")).partition(":")
        if tuner_host != host or _alive(tuner_pid):
            continue
        pid = trial.user_attrs.get("pid")
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.kill(int(pid), signal.SIGKILL)
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its process finished it meanwhile
        requeue(study, study._storage.get_trial(trial._trial_id))


def _die_with_parent() -> None:
    """In the trial process, before it starts: SIGTERM when the tuner dies (Linux), so a killed
    tuner leaves no orphan training on; the trial saves its checkpoint and exits."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _max_epochs(config: Any) -> int:
    train = getattr(config, "train", None)
    return int(getattr(train, "epochs", 1) or 1)


def _check_setup(study: optuna.Study, setup: dict[str, Any], url: str) -> None:
    """A study resumed with another config, space or objective would mix incomparable trials."""
    recorded = study.user_attrs.get("setup")
    if recorded is None:
        study.set_user_attr("setup", setup)
        return
    differ = [k for k in setup if recorded.get(k) != setup[k]]
    if differ:
        raise ConfigError(f"study {study.study_name!r} in {url} was started with another {', '.join(differ)}; "
                          "give --study a new name (or a new tune directory) for a different search")


class _Runner:
    """The trial slots: each a thread that asks, writes, launches, watches and tells."""

    def __init__(self, study, space, config, overrides, tune_dir, storage_url, study_name, prune, trials,
                 deadline, progress):
        self.study, self.space, self.config, self.overrides = study, space, config, overrides
        self.tune_dir, self.storage_url, self.study_name, self.prune = tune_dir, storage_url, study_name, prune
        self.trials, self.deadline = trials, deadline
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stop_reason = "trials"
        self.running = 0
        self.start = time.monotonic()
        self.bar = tqdm(total=trials, desc="trials", disable=not progress, dynamic_ncols=True)
        self._refresh()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self, slot_list: list[Slot]) -> None:
        threads = [threading.Thread(target=self._slot, args=(s,), name=f"trial-slot-{s.index}", daemon=True)
                   for s in slot_list]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.5)
                if self.deadline is not None and time.monotonic() >= self.deadline and not self.stop.is_set():
                    self.stop_reason = "timeout"
                    self.stop.set()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            self.stop.set()
            for thread in threads:
                thread.join()
            raise
        finally:
            self.bar.close()

    # --- one slot --------------------------------------------------------------------------------
    def _slot(self, slot: Slot) -> None:
        while not self.stop.is_set():
            with self.lock:
                if self._finished() + self.running >= self.trials:
                    return
                optuna.storages.fail_stale_trials(self.study)
                trial = self.study.ask()
                self.running += 1
            try:
                self._run_one(trial, slot)
            finally:
                with self.lock:
                    self.running -= 1
                self._refresh()

    def _finished(self) -> int:
        """Finished trials that count toward ``trials``; interrupted ones are queued again instead."""
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=FINISHED)
                   if not t.user_attrs.get("interrupted"))

    def _run_one(self, trial: optuna.Trial, slot: Slot) -> None:
        workdir_name = trial.user_attrs.get("workdir") or f"trials/{trial.number:03d}"
        trial.set_user_attr("workdir", workdir_name)
        trial.set_user_attr("tuner", f"{os.uname().nodename}:{os.getpid()}")
        workdir = self.tune_dir / workdir_name
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            params = self.space.suggest(trial)
            config = load_config(self.config, {**self.overrides, **params, "workdir": str(workdir),
                                               "report_test": False})
        except ConfigError as error:  # a combination the schema refuses (e.g. heads not dividing width)
            trial.set_user_attr("error", str(error))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        save_config(config, workdir / "trial.yaml")
        command = [sys.executable, "-m", "ecomjax.tuning.trial", "--storage", self.storage_url,
                   "--study", self.study_name, "--trial-id", str(trial._trial_id),
                   "--config", str(workdir / "trial.yaml"), "--pruner", json.dumps(self.prune)]
        if slot.cores:
            command += ["--cores", ",".join(map(str, slot.cores))]
            trial.set_user_attr("cores", list(slot.cores))
        env = {**os.environ, **slot.env, "TQDM_DISABLE": "1"}
        with open(workdir / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"--- trial {trial.number} on {slot.describe()}: {' '.join(command)}\n")
            log.flush()
            # Its own session: a Ctrl-C reaches the tuner only, which stops its trials in order.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, preexec_fn=_die_with_parent)
            trial.set_user_attr("pid", process.pid)
            code = self._watch(process, trial)
        self._settle(trial, code, workdir)

    def _watch(self, process: subprocess.Popen, trial: optuna.Trial) -> int:
        storage = self.study._storage
        last_beat = 0.0
        signalled = False
        while True:
            try:
                return process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set() and not signalled:
                process.send_signal(signal.SIGTERM)  # the loop saves its checkpoint, then exits 130
                signalled = True
            if time.monotonic() - last_beat >= 10:
                storage.record_heartbeat(trial._trial_id)
                last_beat = time.monotonic()

    def _settle(self, trial: optuna.Trial, code: int, workdir: Path) -> None:
        """Tell what the trial process did not: interrupted (queued again) or failed."""
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return
        if code == 130 or (code < 0 and -code in (signal.SIGTERM, signal.SIGINT)):
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            requeue(self.study, self.study._storage.get_trial(trial._trial_id))
            return
        if code == PRUNED_EXIT or code == 0:
            reason = f"the trial process exited ({code}) without telling the study"
        elif code == 2:
            reason = _last_error(workdir / "log.txt")
        else:
            reason = (f"the trial process was killed by signal {-code}" if code < 0
                      else f"the trial process died (exit code {code})")
        trial.set_user_attr("error", f"{reason} (log: {workdir / 'log.txt'})")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _refresh(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        counts = {state: sum(1 for t in trials if t.state == state and not t.user_attrs.get("interrupted"))
                  for state in optuna.trial.TrialState}
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = ""
        if complete:
            best_trial = self.study.best_trial
            best = f"{best_trial.value:.4f} (#{best_trial.number})"
        done = counts[optuna.trial.TrialState.COMPLETE] + counts[optuna.trial.TrialState.PRUNED] + \
            counts[optuna.trial.TrialState.FAIL]
        self.bar.n = min(done, self.trials)
        self.bar.set_postfix_str(f"complete {counts[optuna.trial.TrialState.COMPLETE]} pruned "
                                 f"{counts[optuna.trial.TrialState.PRUNED]} failed "
                                 f"{counts[optuna.trial.TrialState.FAIL]} best {best or '-'}")


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ecomjax: error:")]
    return (errors or lines or ["the trial failed"])[-1].removeprefix("ecomjax: error: ")


def _test_metrics(workdir: Path, number: int, cores: list[int] | None) -> dict[str, Any] | None:
    """Score the test split of one selected trial, in a child process (the tuner keeps JAX out)
    on the cores the trial trained on, so that ``best.yaml`` run there gives the same numbers."""
    command = [sys.executable, "-m", "ecomjax.tuning.trial", "--evaluate-test", str(workdir)]
    if cores:
        command += ["--cores", ",".join(map(str, cores))]
    with open(workdir / "log.txt", "a", encoding="utf-8") as log:
        log.write(f"--- test split of trial {number}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "TQDM_DISABLE": "1"}).returncode
    path = workdir / "eval" / "metrics.json"
    if code != 0 or not path.is_file():
        return {"error": f"test evaluation failed (exit code {code}; log: {workdir / 'log.txt'})"}
    return json.loads(path.read_text())


def _write_best_config(config: Any, overrides: dict[str, Any], best: dict[str, Any], tune_dir: Path,
                       study_name: str, objective: str) -> Path:
    """``TUNE_DIR/best.yaml``: the base config with the best trial's values, a file that
    reproduces the trial with ``ecomjax train`` (same seed, same numbers)."""
    import yaml

    tree = config_tree(config, {**overrides, **best["params"]})
    tree["workdir"] = f"runs/{study_name}_best"
    header = (f"# Tuned by `ecomjax tune` (study {study_name!r}): trial {best['number']}, validation "
              f"{objective} {best['value']:.6f}.\n# Values chosen by the search: "
              + ", ".join(f"{k}={v!r}" for k, v in best["params"].items()) + "\n")
    path = tune_dir / "best.yaml"
    path.write_text(header + yaml.safe_dump(tree, sort_keys=False))
    load_config(path)  # what we wrote loads
    return path


__all__ = ["TuneResult", "tune"]
