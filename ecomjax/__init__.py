"""ecomjax: a JAX/Flax toolkit for e-commerce search and recommendation.

Public API::

    import ecomjax
    run = ecomjax.train("configs/sasrec_beauty.yaml", train__epochs=5)   # or "train.epochs": 5
    run.metrics["test"]["ndcg@10"], run.model, run.workdir
    run = ecomjax.load("runs/sasrec_beauty")                 # no data, no training
    run.recommend([12, 7, 301], k=10)                        # original item ids and scores
    ecomjax.evaluate("runs/sasrec_beauty")                   # -> runs/sasrec_beauty/eval/metrics.json
    ecomjax.tune("configs/sasrec_beauty.yaml", "configs/tune/sasrec_beauty.yaml", trials=30)

The config's ``task:`` picks what is trained (``ecomjax.tasks.TASKS``); without one it is a
next-item recommender. Importing ``ecomjax`` does not import JAX: the CLI answers ``--help``
at once, and JAX starts with the first call that needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Bind the ``ecomjax.train`` subpackage before defining the ``train`` function below: importing a
# subpackage for the first time sets it as an attribute of its parent, which would otherwise
# replace the function later. The subpackage's own __init__ imports nothing.
import ecomjax.train as _train_package  # noqa: F401
from ecomjax.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from ecomjax.run import Run
    from ecomjax.train.callbacks import Callback

def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ecomjax")  # pyproject.toml's, the one place the version is written
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()


def train(config_or_path: str | Path | dict[str, Any] | RunConfig | None = None, *,
          callbacks: Sequence[Callback] = (), **overrides: Any) -> Run:
    """Train what the config describes (or resume it) and return the ``Run`` (``.metrics``,
    ``.model``, ``.workdir``, the task's inference call).

    Keyword overrides use ``__`` for the dots of the CLI form (``model__num_layers=1`` is
    ``model.num_layers=1``); a dict of dotted keys can be passed as ``overrides={...}``.
    """
    from ecomjax.train.loop import train as run

    dotted = dict(overrides.pop("overrides", {}) or {})
    dotted.update(overrides)
    return run(load_config(config_or_path, dotted), callbacks)


def load(workdir: str | Path) -> Run:
    """A trained run, read-only: its config, metrics, models and inference call."""
    from ecomjax.run import load as load_run

    return load_run(workdir)


def evaluate(workdir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Re-score a finished run; writes ``WORKDIR/eval/metrics.json`` (``data.*`` / ``eval.*``
    overrides, e.g. ``data__test_path=FILE``)."""
    from ecomjax.run import evaluate as evaluate_run

    return evaluate_run(workdir, overrides)


def tune(config_or_path: str | Path | None, space: str | Path, *, trials: int, **settings: Any):
    """Search ``space`` (YAML: dotted keys -> distributions) over a config with Optuna: each
    trial an ordinary run under ``TUNE_DIR/trials/NNN``, pruned on its validation curve, chosen
    on validation only; writes ``report.md``, ``report.json``, plots and ``best.yaml``. Settings
    and defaults: ``ecomjax.tuning.tune``."""
    from ecomjax.tuning import tune as run_tune

    return run_tune(config_or_path, space, trials=trials, **settings)


__all__ = ["ConfigError", "RunConfig", "evaluate", "load", "load_config", "train", "tune"]
