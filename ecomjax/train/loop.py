"""The one training loop, for every task: one readable function per level, in sections.

``train(config)``: mesh -> task (data, spec) -> ``model.json`` -> the task trains its stages
through ``Trainer.fit`` -> ``metrics.json``. ``Trainer.fit(stage)``: state initialised into its
shardings -> compiled update step (explicit in/out shardings, state donated) -> epochs of
batches (each process feeding its own rows) -> evaluate, stop early, checkpoint, callbacks ->
the kept model. Dropout keys derive from the step number and batches from ``(seed, epoch)``, so
a resumed run replays exactly the computation of an uninterrupted one; the arithmetic does not
depend on the mesh, so the same seed gives the same losses on one device or eight, and a
checkpoint written on one mesh resumes on another.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ecomjax.bench.flops import compiled_flops
from ecomjax.config import RunConfig, load_config, save_config
from ecomjax.data.inputs import changed_inputs, fingerprints, recording_inputs
from ecomjax.errors import (
    ChangedDataError,
    InputError,
    MissingFileError,
    NonFiniteError,
    UnknownKeyError,
)
from ecomjax.tasks.base import Stage, Task, Trained
from ecomjax.train.callbacks import Callback
from ecomjax.train.checkpoint import RunCheckpoints, abstract_like
from ecomjax.train.distributed import is_primary
from ecomjax.train.history import History
from ecomjax.train.resume import check_same_run
from ecomjax.train.sharding import make_mesh
from ecomjax.train.state import UpdateProgram, check_given
from ecomjax.train.tracking import Tracker, check_trackers, open_trackers
from ecomjax.train.workdir import (
    discard_aside,
    has_checkpoint,
    open_workdir,
    read_run_record,
    restore_aside,
    set_aside,
    write_json_atomically,
    write_run_record,
)


class NonFiniteLossError(NonFiniteError):
    """Training produced a NaN or infinite loss; the message names the stage and step."""


def train(config: RunConfig, callbacks: Sequence[Callback] = ()):
    """Train (or resume, or re-report a finished run in) ``config.workdir``; returns a ``Run``."""
    from ecomjax.run import Run
    from ecomjax.tasks import task_class

    task: Task = task_class(config.task)(config)
    check_trackers(config)  # a tracker's missing package fails before any data is read
    mesh = make_mesh(config.mesh)
    primary = is_primary()
    workdir = open_workdir(config, primary)
    task.workdir, task.mesh = workdir, mesh
    _sync("ecomjax-open-workdir")
    with jax.set_mesh(mesh):
        resuming = check_same_run(config, workdir)
        replacing = not resuming  # the workdir holds a run that train.resume=false replaces
        if replacing and primary:
            set_aside(workdir)
        _sync("ecomjax-set-aside")
        trainer = None
        try:
            with recording_inputs() as inputs:
                spec = task.prepare()
            recorded = read_run_record(workdir).get("inputs", {})
            changed = changed_inputs(recorded, inputs) if resuming and has_checkpoint(workdir) else []
            if changed:
                raise ChangedDataError(f"{changed[0]}: the run in {workdir} was trained on it as it was; "
                                       "train into another workdir (or restore the file)")
            if primary:
                save_config(config, workdir / "config.yaml")
                (workdir / "model.json").write_text(json.dumps({"task": task.name, "spec": spec}, indent=1))
                write_run_record(workdir, config, fingerprints(inputs))
                vocabulary = task.vocabulary()
                if vocabulary:
                    np.savez(workdir / "vocab.npz", **vocabulary)
                report = task.data_report()
                if report:
                    write_json_atomically(workdir / "data_report.json", report)
            trainer = Trainer(config, workdir, mesh, callbacks, resume=resuming,
                              on_first_save=(lambda: discard_aside(workdir)) if replacing and primary else None)
            try:
                metrics = task.run(trainer, spec)
            finally:
                trainer.close()
        except BaseException:
            if replacing and primary and not (trainer and trainer.saved):
                restore_aside(workdir)  # the new run saved nothing: the replaced run comes back
            raise
        main = next(iter(trainer.trained.values()))
        metrics = {**metrics, **main.summary,
                   "stages": {name: t.summary for name, t in trainer.trained.items()} if len(trainer.trained) > 1 else {},
                   "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
                   "num_processes": jax.process_count(),
                   "mesh": {"data": mesh.shape["data"], "model": mesh.shape["model"]}}
        if not metrics["stages"]:
            del metrics["stages"]
        if not config.report_test:
            metrics = {k: v for k, v in metrics.items() if k not in task.test_keys}
        if primary:
            write_json_atomically(workdir / "metrics.json", metrics)
    return Run(workdir, config, task, spec, {name: t.model for name, t in trainer.trained.items()}, metrics)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Trainer:
    """Trains the stages of one run; ``fit`` is the loop."""

    def __init__(self, config: RunConfig, workdir: Path, mesh: jax.sharding.Mesh,
                 callbacks: Sequence[Callback] = (), *, resume: bool = True, on_first_save=None):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.on_first_save = on_first_save  # called once, after the run's first checkpoint is on disk
        self.saved = False
        self.callbacks = list(callbacks)
        self.resume = resume
        self.primary = is_primary()
        self.history = History(workdir / "history.jsonl", enabled=self.primary)
        self.trackers: list[Tracker] = []  # the training stage's (train.loggers), process 0 only
        self.trained: dict[str, Trained] = {}

    def close(self) -> None:
        self.history.close()
        self._close_trackers()

    def _callbacks(self) -> list[Callback]:
        """The trackers first: they record an evaluation before a callback can stop the run."""
        return [*self.trackers, *self.callbacks]

    def _close_trackers(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def fit(self, stage: Stage) -> Trained:
        """Train ``stage`` (or resume it, or restore it when it has finished) and return its
        model at the kept parameters."""
        cfg, name, mesh = stage.train, stage.name, self.mesh
        self._close_trackers()  # a previous stage's, had it failed

        # --- Sizes ---------------------------------------------------------------------------
        data_devices = mesh.shape["data"]
        prefix = "" if name == "model" else f"{name}."
        if cfg.batch_size % data_devices:
            raise InputError(f"{prefix}train.batch_size={cfg.batch_size} does not split over mesh.data="
                             f"{data_devices} devices; use a multiple of {data_devices}")
        steps_per_epoch = [stage.steps_in_epoch(e) for e in range(cfg.epochs)]
        total_steps = sum(steps_per_epoch)
        if total_steps == 0:
            raise InputError(f"{name}: no training batch: fewer training examples than "
                             f"{prefix}train.batch_size={cfg.batch_size}")

        # --- State, update step ----------------------------------------------------------------
        program = UpdateProgram(stage, self.config.mesh.rules, mesh, self.config.seed, total_steps)
        layout, schedule = program.layout, program.schedule
        checkpoints = RunCheckpoints(self.workdir / "checkpoints" / name)
        resuming = self.resume and cfg.resume and checkpoints.latest_step() is not None
        meta = {"epoch": 0, "steps": 0, "best": None, "best_epoch": -1, "bad_evals": 0, "finished": False,
                "stop_reason": None, "train_seconds": 0.0, "eval_seconds": 0.0, "compile_seconds": 0.0,
                "valid_curve": [], "best_valid": None}
        if resuming:
            state, buffers, best_params, meta = checkpoints.restore(
                {k: v for k, v in layout.abstract.items() if k != "buffers"}, layout.abstract["buffers"],
                layout.abstract["params"])
            state = {**state, "buffers": buffers}
            if not meta["finished"]:
                meta["stop_reason"] = None  # stopped by max_steps or a signal: it goes on now
        else:
            checkpoints.delete_all()
            state = program.init(self._init_from(stage))
            best_params = jax.tree.map(jnp.copy, state["params"])
        num_params = sum(x.size for x in jax.tree.leaves(state["params"]))

        def model_of(params) -> nnx.Module:
            return nnx.merge(layout.graphdef, params, state["buffers"])

        if meta["finished"]:  # a finished stage: nothing to train, its kept model is the result
            checkpoints.close()
            return self._done(stage, model_of(best_params), meta, num_params)

        def step_fn(batch):
            t0 = time.perf_counter()
            fn, device, fresh = program.step(state, batch)
            if fresh:
                if "flops_per_step" not in meta:
                    meta["flops_per_step"] = compiled_flops(jax.jit(program.flops_step()).lower(state, device))
                meta["compile_seconds"] += time.perf_counter() - t0
            return fn, device

        def save_checkpoint():
            meta["steps"] = int(state["step"])
            checkpoints.save(int(state["step"]), {k: v for k, v in state.items() if k != "buffers"},
                             state["buffers"], best_params, meta)
            if not self.saved:
                self.saved = True
                if self.on_first_save is not None:
                    self.on_first_save()

        # Ctrl-C / SIGTERM set a flag checked between steps, so the saved state is always consistent.
        stop_signal = {"received": False}

        def on_signal(signum, frame):
            if stop_signal["received"]:
                raise KeyboardInterrupt
            stop_signal["received"] = True

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        # --- Loop ----------------------------------------------------------------------------------
        global_step = int(state["step"])
        self.history.start(name, keep_until_step=global_step)
        if self.primary:
            self.trackers = open_trackers(name, cfg, self.workdir, global_step, self.config)
        for callback in self._callbacks():
            callback.on_stage_start(name, total_steps)
        cumulative = np.concatenate([[0], np.cumsum(steps_per_epoch)])  # epoch position from the step counter
        selectable_from = stage.selectable_from(total_steps)
        max_steps = cfg.max_steps or math.inf
        show = cfg.progress and self.primary
        warmed = False
        pending = None  # (step, epoch, metrics) of the last step, logged once its loss is fetched
        try:
            while meta["stop_reason"] is None and meta["epoch"] < cfg.epochs:
                epoch = meta["epoch"]
                batches = stage.batches(epoch)
                start = global_step - int(cumulative[epoch])
                bar = tqdm(total=len(batches), initial=start, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
                           disable=not show, leave=False, dynamic_ncols=True)
                t_epoch = time.perf_counter()
                pending = None
                for index in range(start, len(batches)):
                    if global_step >= max_steps:
                        meta["stop_reason"] = "max_steps"
                        break
                    if stop_signal["received"]:
                        raise KeyboardInterrupt
                    fn, batch = step_fn(batches[index])
                    if not warmed:  # compile evaluation too before timing anything
                        t0 = time.perf_counter()
                        stage.warm_up(model_of(state["params"]))
                        meta["compile_seconds"] += time.perf_counter() - t0
                        t_epoch, warmed = time.perf_counter(), True
                    state, step_metrics = fn(state, batch)
                    if pending is not None:  # fetch the previous step's loss while this one runs
                        self._log_step(name, bar, *pending, schedule)
                    pending = (global_step, epoch, step_metrics)
                    global_step += 1
                    if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                        self._log_step(name, bar, *pending, schedule)
                        pending = None
                        save_checkpoint()
                if pending is not None:
                    self._log_step(name, bar, *pending, schedule)
                    pending = None
                jax.block_until_ready(state)
                meta["train_seconds"] += time.perf_counter() - t_epoch
                bar.close()
                if meta["stop_reason"] == "max_steps":
                    save_checkpoint()
                    break
                meta["epoch"] = epoch + 1
                valid = None
                if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs:
                    better, valid = self._evaluate(stage, model_of(state["params"]), meta, epoch + 1, global_step,
                                                   selectable=global_step >= selectable_from)
                    if better:
                        best_params = jax.tree.map(jnp.copy, state["params"])
                    if meta["bad_evals"] >= cfg.early_stopping_patience:
                        meta["stop_reason"] = "early_stopping"
                if meta["stop_reason"] is None and meta["epoch"] >= cfg.epochs:
                    meta["stop_reason"] = "epochs"
                meta["finished"] = meta["stop_reason"] in ("early_stopping", "epochs")
                save_checkpoint()
                if valid is not None:  # after the save: a callback that stops the run loses no epoch
                    for callback in self._callbacks():
                        callback.on_eval(name, epoch + 1, global_step, valid)
        except KeyboardInterrupt:
            jax.block_until_ready(state)
            if pending is not None:  # the step the checkpoint includes keeps its history line
                self._log_step(name, bar, *pending, schedule)
            save_checkpoint()
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            checkpoints.close()
        meta["steps"] = int(state["step"])
        kept = best_params if meta["best"] is not None else state["params"]
        return self._done(stage, model_of(kept), meta, num_params)

    # --- pieces of the loop ----------------------------------------------------------------------

    def _evaluate(self, stage: Stage, model: nnx.Module, meta: dict[str, Any], epoch: int, step: int,
                  selectable: bool) -> tuple[bool, dict[str, Any]]:
        """Validate, record, track the best; returns whether these parameters are the new best,
        and the validation metrics."""
        t0 = time.perf_counter()
        valid = stage.evaluate(model, "valid")
        meta["eval_seconds"] += time.perf_counter() - t0
        if stage.monitor not in valid:
            raise UnknownKeyError(f"{stage.name}: validation computed {sorted(valid)}, not the monitored "
                           f"{stage.monitor!r}")
        score = float(valid[stage.monitor])
        if not math.isfinite(score):
            raise NonFiniteError(f"{stage.name}: validation {stage.monitor} is {score} after epoch {epoch}")
        timing = {"train_seconds": round(meta["train_seconds"], 3), "eval_seconds": round(meta["eval_seconds"], 3)}
        self.history.write({"stage": stage.name, "step": step, "epoch": epoch, "valid": valid, **timing})
        meta["valid_curve"].append({"epoch": epoch, stage.monitor: score, **timing})
        if stage.train.progress and self.primary:
            tqdm.write(f"{stage.name} epoch {epoch}: valid {stage.monitor} {score:.4f} "
                       f"({meta['train_seconds']:.0f}s training)")
        if not selectable:  # e.g. the target sparsity does not hold yet: not a model to keep
            return False, valid
        better = meta["best"] is None or (score > meta["best"] if stage.higher_is_better else score < meta["best"])
        if better:
            meta["best"], meta["best_epoch"], meta["bad_evals"], meta["best_valid"] = score, epoch, 0, valid
        else:
            meta["bad_evals"] += 1
        return better, valid

    def _log_step(self, name: str, bar, step: int, epoch: int, step_metrics, schedule) -> None:
        values = jax.device_get(step_metrics)
        loss = float(values["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"{name}: loss is {loss} at step {step} (epoch {epoch + 1}); lower "
                                     "train.learning_rate or check the data")
        record = {"stage": name, "step": step + 1, "epoch": epoch + 1, "loss": loss,
                  "grad_norm": float(values["grad_norm"]), "lr": float(schedule(step)),
                  **{k: float(v) for k, v in values.items() if k not in ("loss", "grad_norm")}}
        self.history.write(record)
        for callback in self._callbacks():
            callback.on_step(name, record)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(1)

    def _init_from(self, stage: Stage) -> dict[str, Any] | None:
        """``train.init_from``: the finished run's kept parameters of this stage, checked against
        the shapes this run's model needs; ``None`` (fresh initialisation) when unset. LoRA
        adapters, which the source run did not have, start fresh."""
        source = stage.train.init_from
        if not source:
            return None
        from ecomjax.models.paths import flat_params
        from ecomjax.run import load

        prefix = "" if stage.name == "model" else f"{stage.name}."
        key = f"{prefix}train.init_from={source!r}"
        try:
            run = load(source, mesh=self.mesh)
        except FileNotFoundError as error:
            raise MissingFileError(f"{key}: {error}") from None
        if run.config.task != self.config.task or stage.name not in run.models:
            raise InputError(f"{key}: a {run.config.task} run without a {stage.name!r} model; this run is "
                             f"a {self.config.task} run")
        stage.check_init_from(run)
        given = flat_params(nnx.state(run.models[stage.name], nnx.Param))
        wanted = nnx.state(nnx.eval_shape(stage.build), nnx.Param)
        check_given(given, wanted, key, new=lambda path: "_lora_" in path)
        return given

    def _done(self, stage: Stage, model: nnx.Module, meta: dict[str, Any], num_params: int) -> Trained:
        epochs_run = meta["epoch"]
        summary = {
            "stop_reason": meta["stop_reason"] or "finished", "best_epoch": meta["best_epoch"],
            "epochs_run": epochs_run, "steps": int(meta.get("steps", 0)),
            "train_seconds": round(meta["train_seconds"], 3), "eval_seconds": round(meta["eval_seconds"], 3),
            "compile_seconds": round(meta["compile_seconds"], 3),
            "seconds_per_epoch": round(meta["train_seconds"] / max(epochs_run, 1), 3),
            "flops_per_step": meta.get("flops_per_step"), "valid_curve": meta["valid_curve"],
            "monitor": stage.monitor, "num_params": int(num_params),
        }
        trained = Trained(stage.name, model, summary)
        self.trained[stage.name] = trained
        for callback in self._callbacks():
            callback.on_stage_end(stage.name, summary)
        self.trackers = []  # each closed itself at its stage's end
        return trained


__all__ = ["NonFiniteLossError", "Trainer", "abstract_like", "load_config", "train"]
