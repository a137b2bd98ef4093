"""ecomjax: a JAX/Flax toolkit for e-commerce search and recommendation.

Public API::

    import ecomjax
    result = ecomjax.train("configs/sasrec_beauty.yaml", train__epochs=5)   # or "train.epochs": 5
    result.metrics["test"]["ndcg@10"], result.model, result.workdir

The config's ``task:`` picks what is trained: absent = a next-item recommender, ``search`` =
relevance models and a search pipeline, ``ranker`` = the multi-task satisfaction ranker,
``multi_behavior`` = the cart + buy recommender.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Import the ``ecomjax.train`` subpackage before defining the ``train`` function below: importing
# a subpackage sets it as an attribute of its parent, which would otherwise shadow the function.
import ecomjax.train.loop as _loop
from ecomjax.config import Config, ConfigError, declared_task, load_config

__version__ = "0.1.0"


def train(config_or_path: str | Path | dict[str, Any] | Config | None = None, **overrides: Any):
    """Train what the config describes and return a ``TrainResult`` (``.metrics``, ``.model``,
    ``.workdir``).

    Keyword overrides use ``__`` for the dots of the CLI form (``model__num_layers=1`` is
    ``model.num_layers=1``); a dict of dotted keys can be passed as ``overrides={...}``.
    """
    dotted = dict(overrides.pop("overrides", {}) or {})
    dotted.update(overrides)
    task = declared_task(config_or_path)
    if task == "search":  # relevance models + search pipeline
        from ecomjax.search.config import load_search_config
        from ecomjax.search.train import train_search

        return train_search(load_search_config(config_or_path, dotted))
    if task == "ranker":  # multi-task click / purchase / dwell ranker
        from ecomjax.ranking.config import load_ranker_config
        from ecomjax.ranking.train import train_ranker

        return train_ranker(load_ranker_config(config_or_path, dotted))
    if task == "multi_behavior":  # cart + buy recommender (Taobao)
        from ecomjax.ranking.multi_behavior import train_multi_behavior
        from ecomjax.ranking.multi_behavior_config import load_multi_behavior_config

        return train_multi_behavior(load_multi_behavior_config(config_or_path, dotted))
    return _loop.train_next_item(load_config(config_or_path, dotted))


def evaluate(workdir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Re-evaluate a finished run from its checkpoint (resolved config + best parameters).

    A search workdir takes ``data.test_path=FILE`` (a relevance file of the same format) and
    writes ``WORKDIR/eval/metrics.json``; a ranker workdir re-scores its test split into the same
    file.
    """
    workdir = Path(workdir)
    task = declared_task(workdir / "config.yaml")
    if task == "ranker":
        from ecomjax.ranking.train import evaluate_ranker

        if overrides:
            raise ConfigError(f"a ranker workdir takes no overrides, not {sorted(overrides)}")
        return evaluate_ranker(workdir)
    if task == "multi_behavior":
        raise ConfigError(f"{workdir}: a multi_behavior run is evaluated on buy.test when it trains; "
                          "its test metrics are in metrics.json")
    if task == "search":
        from ecomjax.search.train import evaluate_search

        unknown = set(overrides) - {"data.test_path", "data__test_path"}
        if unknown:
            raise ConfigError(f"a search workdir takes only data.test_path=FILE, not {sorted(unknown)}")
        return evaluate_search(workdir, overrides.get("data.test_path") or overrides.get("data__test_path"))
    dotted = {"train.progress": False, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return _loop.train_next_item(load_config(workdir / "config.yaml", dotted)).metrics


__all__ = ["Config", "ConfigError", "evaluate", "load_config", "train"]
