"""Tasks: what a model is trained for. One module per task, one line per task in ``TASKS``.

The registry maps the config's ``task:`` value to ``module:Class``; modules are imported only
when their task is asked for, so reading a config of one task never imports another's code
(and ``ecomjax --help`` imports none). The protocol every task implements is
``ecomjax.tasks.base``.
"""

from __future__ import annotations

import importlib
from typing import Any

TASKS: dict[str, str] = {
    "next_item": "ecomjax.tasks.next_item:NextItemTask",  # SASRec / GRU4Rec on item sequences
    "relevance": "ecomjax.tasks.relevance:RelevanceTask",  # search: BM25, bi-/cross-encoder, GBDT re-rankers
    "ranker": "ecomjax.tasks.ranker:RankerTask",  # click / purchase / dwell heads over impressions
    "multi_behavior": "ecomjax.tasks.multi_behavior:MultiBehaviorTask",  # cart + buy -> buy (Taobao)
    "attributes": "ecomjax.tasks.attributes:AttributesTask",  # product attributes from title and photo
    "product_retrieval": "ecomjax.tasks.product_retrieval:RetrievalTask",  # attribute queries -> products
}


def task_class(name: Any) -> type:
    """The task class registered as ``name``; an unknown name lists the registered ones."""
    from ecomjax.config import ConfigError

    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task: {name!r} is not a registered task; tasks: {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
