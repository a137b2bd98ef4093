"""Hooks into the loop, for what watches training without changing it: experiment trackers,
hyperparameter search (report each validation score, stop a hopeless trial), custom logging.

A callback subclasses ``Callback`` and overrides what it needs; ``ecomjax.train(config,
callbacks=[...])`` passes them to the loop, which calls them in order on process 0 and on the
other processes alike. An exception raised by a callback stops training; ``on_eval`` runs
after the epoch's checkpoint is saved, so a tuner's "prune this trial" (an exception of its own)
loses no work and the stopped run stays resumable.

The trackers a stage's ``train.loggers`` asks for (``ecomjax.train.tracking``: TensorBoard,
Weights & Biases) are callbacks too: the loop runs them first, on process 0 only.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_stage_start(self, stage: str, total_steps: int) -> None:
        """Before the first step of a trained model (also when resuming it)."""

    def on_step(self, stage: str, record: dict[str, Any]) -> None:
        """After each logged optimizer step: the ``history.jsonl`` record (loss, lr, ...)."""

    def on_eval(self, stage: str, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        """After each validation evaluation: its metrics (the monitored one among them)."""

    def on_stage_end(self, stage: str, summary: dict[str, Any]) -> None:
        """When a model has finished training: best epoch, stop reason, timings."""
