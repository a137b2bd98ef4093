"""ecomjax: a JAX/Flax toolkit for e-commerce search and recommendation.

Public API::

    import ecomjax
    result = ecomjax.train("configs/sasrec_beauty.yaml", train__epochs=5)   # or "train.epochs": 5
    result.metrics["test"]["ndcg@10"], result.model, result.workdir
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Import the ``ecomjax.train`` subpackage before defining the ``train`` function below: importing
# a subpackage sets it as an attribute of its parent, which would otherwise shadow the function.
import ecomjax.train.loop as _loop
from ecomjax.config import Config, ConfigError, load_config

__version__ = "0.1.0"


def train(config_or_path: str | Path | dict[str, Any] | Config | None = None, **overrides: Any):
    """Train what the config describes and return a ``TrainResult`` (``.metrics``, ``.model``,
    ``.workdir``).

    Keyword overrides use ``__`` for the dots of the CLI form (``model__num_layers=1`` is
    ``model.num_layers=1``); a dict of dotted keys can be passed as ``overrides={...}``.
    """
    dotted = dict(overrides.pop("overrides", {}) or {})
    dotted.update(overrides)
    from ecomjax.search.config import is_search_config, load_search_config

    if is_search_config(config_or_path):  # ``task: search``: relevance models + search pipeline
        from ecomjax.search.train import train_search

        return train_search(load_search_config(config_or_path, dotted))
    return _loop.train_next_item(load_config(config_or_path, dotted))


def evaluate(workdir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Re-evaluate a finished run from its checkpoint (resolved config + best parameters).

    A search workdir takes ``data.test_path=FILE`` (a relevance file of the same format) and
    writes ``WORKDIR/eval/metrics.json``.
    """
    workdir = Path(workdir)
    from ecomjax.search.config import is_search_config

    if is_search_config(workdir / "config.yaml"):
        from ecomjax.search.train import evaluate_search

        unknown = set(overrides) - {"data.test_path", "data__test_path"}
        if unknown:
            raise ConfigError(f"a search workdir takes only data.test_path=FILE, not {sorted(unknown)}")
        return evaluate_search(workdir, overrides.get("data.test_path") or overrides.get("data__test_path"))
    dotted = {"train.progress": False, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return _loop.train_next_item(load_config(workdir / "config.yaml", dotted)).metrics


__all__ = ["Config", "ConfigError", "evaluate", "load_config", "train"]
