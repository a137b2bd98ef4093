"""Hyperparameter search for every task, on Optuna: ``ecomjax tune`` / ``ecomjax.tune``.

``space`` (the YAML grammar of a search space), ``study`` (database, samplers, pruners),
``devices`` (how many trials at once, on which cores or devices), ``trial`` (one trial: a
training run in its own process that reports each validation score), ``tuner`` (the search),
``report`` (report.md / report.json / plots).
"""

from ecomjax.tuning.tuner import TuneResult, tune

__all__ = ["TuneResult", "tune"]
