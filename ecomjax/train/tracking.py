"""Experiment trackers on the one loop: TensorBoard event files and Weights & Biases runs, asked
for by a stage's ``train.loggers``.

``history.jsonl`` stays the record of a run (``jsonl`` is always on, so listing it is optional);
a tracker is a ``Callback`` that copies the same numbers to a dashboard, and only those, so the
two cannot disagree: each step record's numbers under ``train/`` (``train/loss``, ``train/lr``,
``train/grad_norm``, a task's extra loss terms), each evaluation's under ``valid/``
(``valid/ndcg@10``; nested mappings join with ``/``), the stage's final summary under
``summary/`` (steps, timings, parameter count), all against the global step.

Only process 0 tracks, as only it writes ``history.jsonl``. Each trained stage (``model``,
``buy_only``, ``cross_encoder``, ...) is a run of its own: ``WORKDIR/tensorboard/<stage>/``, and
one W&B run per stage, grouped by the workdir. A resumed stage follows the history's rewrite: a
stage starting afresh clears its event files; a stage resumed from its checkpoint at step N
appends a new event file that opens with a restart marker at step N + 1, from which TensorBoard
drops what an interrupted process wrote after that checkpoint (the resumed run writes it again).

A tracker's package is imported only when it is asked for, and a missing one fails when
training starts, before any data is read, with the key and the ``pip install`` that fixes it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import numbers
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecomjax.config import RunConfig, TrainConfig
from ecomjax.errors import ConfigError
from ecomjax.train.callbacks import Callback

PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb": ("wandb", "wandb")}  # logger -> (module, pip name)
_NOT_METRICS = ("stage", "step", "epoch")  # a step record's position, not measurements


# --- what is tracked ----------------------------------------------------------------------------


def scalars(values: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The numbers of a record as ``prefix/name`` tags (nested mappings join with ``/``);
    strings, lists, booleans and ``None`` are left out."""
    tags: dict[str, float] = {}
    for key, value in values.items():
        if key in skip:
            continue
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            tags.update(scalars(value, tag))
        elif _is_number(value):
            tags[tag] = float(value)
    return tags


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0
                                               and np.issubdtype(value.dtype, np.number))


class Tracker(Callback):
    """Mirrors the loop's records to one backend; ``log``, ``flush`` and ``close`` are the
    backend's part. ``close`` may be called more than once (the stage's end, then the run's)."""

    def on_step(self, stage: str, record: dict[str, Any]) -> None:
        self.log(scalars(record, "train", skip=_NOT_METRICS), int(record["step"]))

    def on_eval(self, stage: str, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        self.log(scalars(metrics, "valid"), step)
        self.flush()

    def on_stage_end(self, stage: str, summary: dict[str, Any]) -> None:
        self.log(scalars(summary, "summary"), int(summary["steps"]))
        self.close()

    def log(self, tags: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged visible now (after each evaluation)."""

    def close(self) -> None:
        raise NotImplementedError


# --- TensorBoard --------------------------------------------------------------------------------


class TensorBoardTracker(Tracker):
    """Event files under ``logdir`` through tensorboardX's ``FileWriter``. Summaries are built
    as protos directly: ``SummaryWriter.add_scalar`` would rename ``ndcg@10`` to ``ndcg_10``."""

    def __init__(self, logdir: Path, start_step: int):
        from tensorboardX import FileWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary

        self._summary = Summary
        if start_step == 0:  # a fresh stage: its history lines were dropped, so are its events
            shutil.rmtree(logdir, ignore_errors=True)
        # one file per start; the start step in the name keeps two starts within a second apart
        self.writer = FileWriter(str(logdir), flush_secs=30, filename_suffix=f".{start_step:012d}.{os.getpid()}")
        if start_step > 0:
            self.writer.add_event(Event(step=start_step + 1, session_log=SessionLog(status=SessionLog.START)))

    def log(self, tags: dict[str, float], step: int) -> None:
        if self.writer is None or not tags:
            return
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in tags.items()]
        self.writer.add_summary(self._summary(value=values), global_step=step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- Weights & Biases ---------------------------------------------------------------------------


class WandbTracker(Tracker):
    """One W&B run per stage: named after the workdir (and the stage, beside the main model),
    grouped by the workdir, its config the run's resolved config. ``wandb`` reads ``WANDB_MODE``
    (``offline`` needs no network), ``WANDB_PROJECT`` (default ``ecomjax``) and the rest of its
    environment itself. A resumed stage continues its W&B run (the id is kept in
    ``WORKDIR/wandb/ids.json``); steps that run already holds are ignored by W&B."""

    def __init__(self, wandb: Any, workdir: Path, stage: str, start_step: int, config: RunConfig):
        name = workdir.resolve().name
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "ecomjax", dir=str(workdir),
            id=_wandb_id(workdir, stage, start_step), resume="allow", group=name, job_type=stage,
            name=name if stage == "model" else f"{name}/{stage}", config=config.to_dict())

    def log(self, tags: dict[str, float], step: int) -> None:
        if self.run is not None and tags:
            self.run.log(tags, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _wandb_id(workdir: Path, stage: str, start_step: int) -> str:
    """The stage's W&B run id: the one it had when resumed, a new one when it starts afresh."""
    path = workdir / "wandb" / "ids.json"
    ids = json.loads(path.read_text()) if path.is_file() else {}
    if start_step == 0 or stage not in ids:
        ids[stage] = secrets.token_hex(8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ids, indent=1))
    return ids[stage]


# --- wiring ------------------------------------------------------------------------------------


def import_tracker(logger: str, key: str) -> Any:
    """The module behind ``logger``, or a ``ConfigError`` naming ``key`` and the install."""
    module, package = PACKAGES[logger]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{key}: {logger!r} needs the {package} package: pip install {package} "
                          f"(or leave {logger} out of {key})") from None


def train_sections(section: Any, prefix: str = "") -> Iterator[tuple[str, TrainConfig]]:
    """``(dotted key, section)`` of every ``train`` section of a config (a task may have several:
    ``bi_encoder.train``, ``cross_encoder.train``)."""
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, TrainConfig):
            yield f"{prefix}{field.name}", value
        elif dataclasses.is_dataclass(value):
            yield from train_sections(value, f"{prefix}{field.name}.")


def check_trackers(config: RunConfig) -> None:
    """Import every tracker the config asks for, so that a missing package fails at the start."""
    for key, train in train_sections(config):
        for logger in train.loggers:
            if logger in PACKAGES:
                import_tracker(logger, f"{key}.loggers")


def open_trackers(stage_name: str, train: TrainConfig, workdir: Path, start_step: int,
                  config: RunConfig) -> list[Tracker]:
    """The trackers of one stage starting (or resuming) at ``start_step``."""
    key = ("train" if stage_name == "model" else f"{stage_name}.train") + ".loggers"
    trackers: list[Tracker] = []
    if "tensorboard" in train.loggers:
        import_tracker("tensorboard", key)
        trackers.append(TensorBoardTracker(workdir / "tensorboard" / stage_name, start_step))
    if "wandb" in train.loggers:
        trackers.append(WandbTracker(import_tracker("wandb", key), workdir, stage_name, start_step, config))
    return trackers
