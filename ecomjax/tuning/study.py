"""The Optuna study: its database, sampler and pruner, built from plain settings.

The study lives in a real database: SQLite in the tune directory by default, or any SQLAlchemy
URL (``postgresql://...``, ``mysql+pymysql://...``) so that tune processes on several machines
share one study, which is how tuning scales past one host. Trials send heartbeats; a trial whose
heartbeats stopped (its tune process was killed) is marked FAIL by the next tune process that
opens the study and queued again with the same parameters, so its run resumes from its
checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna

from ecomjax.config import ConfigError
from ecomjax.tuning.space import SearchSpace

# Optuna marks heartbeats outside Study.optimize, and fail_stale_trials, as experimental: the
# tuner drives both itself (ask / tell around a child process), which is what they are for.
warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "asha", "none")
PRUNED_EXIT = 3  # a trial process's exit code after the pruner stopped it
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 90  # no heartbeat for this long: the trial's tune process is gone


def default_storage(tune_dir: Path) -> str:
    return f"sqlite:///{(tune_dir / 'study.db').absolute()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes write (trial reports, heartbeats, tells): wait for the lock, do not fail
        engine = {"connect_args": {"timeout": 120}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS,
                                          heartbeat_stale_trial_callback=requeue)
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as error:
        raise ConfigError(f"--storage {url!r}: {error}") from None
    except Exception as error:  # sqlalchemy's connection errors
        raise ConfigError(f"--storage {url!r}: cannot open the study database: {error}") from None


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue an interrupted trial again (Ctrl-C, the time budget, a tuner that died: its
    heartbeats stopped) with its parameters and its own workdir, where its run resumes from the
    last checkpoint."""
    attrs = {"workdir": trial.user_attrs.get("workdir", f"trials/{trial.number:03d}"),
             "resumes_trial": trial.number}
    study.enqueue_trial(trial.params, user_attrs=attrs)


def make_sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        numeric = [d.key for d in space.dimensions if d.kind != "choice"]
        if len(numeric) < 2:
            raise ConfigError(f"{space.path}: CMA-ES needs at least two numeric keys (uniform / int); "
                              f"the space has {numeric or 'none'}: use tpe")
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=1, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.TPESampler(seed=seed))
    raise ConfigError(f"--sampler {name!r}: choose one of {list(SAMPLERS)}")


def pruner_settings(name: str, startup_trials: int, warmup_epochs: int, max_epochs: int) -> dict[str, Any]:
    """Plain settings (JSON) from which the tuner and every trial process build the same pruner."""
    if name not in PRUNERS:
        raise ConfigError(f"--pruner {name!r}: choose one of {list(PRUNERS)}")
    return {"name": name, "startup_trials": startup_trials, "warmup_epochs": warmup_epochs,
            "max_epochs": max_epochs}


def make_pruner(settings: dict[str, Any]) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose value at an epoch is worse than the median of earlier
    trials at that epoch; ``hyperband`` (and ``asha``, its single-bracket successive halving):
    keep the best fraction of trials at geometrically spaced epochs."""
    name = settings.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                           n_warmup_steps=settings["warmup_epochs"])
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings["warmup_epochs"]),
                                              max_resource=settings["max_epochs"], reduction_factor=3)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, settings["warmup_epochs"]),
                                                      reduction_factor=3)
    return optuna.pruners.NopPruner()


__all__ = ["PRUNERS", "SAMPLERS", "default_storage", "make_pruner", "make_sampler", "open_storage",
           "pruner_settings", "requeue"]
