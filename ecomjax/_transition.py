"""TRANSITION (deleted when the last stack moves onto ecomjax.train.loop): the search runs still
train through their own loop; ``ecomjax.train``, ``evaluate`` and
the CLI hand their configs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNPORTED = ("search",)


def unported_task(source: Any) -> str | None:
    import yaml

    if isinstance(source, dict):
        task = source.get("task")
    elif isinstance(source, str | Path) and Path(source).is_file():
        task = (yaml.safe_load(Path(source).read_text()) or {}).get("task")
    else:
        task = getattr(source, "task", None)
    return task if task in UNPORTED else None


def train(source: Any, overrides: dict[str, Any]):
    task = unported_task(source)
    if task == "search":
        from ecomjax.search.config import load_search_config
        from ecomjax.search.train import train_search

        return train_search(load_search_config(source, overrides))
    raise AssertionError(task)


def evaluate(workdir: Path, overrides: dict[str, Any]):
    from ecomjax.config import ConfigError

    task = unported_task(workdir / "config.yaml")
    if task == "search":
        from ecomjax.search.train import evaluate_search

        unknown = set(overrides) - {"data.test_path", "data__test_path"}
        if unknown:
            raise ConfigError(f"a search workdir takes only data.test_path=FILE, not {sorted(unknown)}")
        return evaluate_search(workdir, overrides.get("data.test_path") or overrides.get("data__test_path"))
    raise AssertionError(task)


def describe(source: Any, overrides: list[str]) -> dict[str, Any]:
    from ecomjax.search.config import load_search_config
    from ecomjax.search.train import load_splits

    data, splits = load_splits(load_search_config(source, overrides))
    return {"source": data.source, "pairs": len(data), "queries": len(data.query_groups()[0]),
            "products": len(data.catalogue()[0]), "mean_relevance": round(float(data.relevance.mean()), 4),
            "splits": {k: len(v) for k, v in splits.items()}}
