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
    "next_item": "ecomjax.tasks.next_item:NextItemTask",
    "relevance": "ecomjax.tasks.relevance:RelevanceTask",
    "ranker": "ecomjax.tasks.ranker:RankerTask",
    "multi_behavior": "ecomjax.tasks.multi_behavior:MultiBehaviorTask",
    "attributes": "ecomjax.tasks.attributes:AttributesTask",
    "product_retrieval": "ecomjax.tasks.product_retrieval:RetrievalTask",
}

# What ``ecomjax models`` prints: one line per task, then one per model choice, each choice the
# override that selects it. Kept beside the registry and free of imports so the listing needs
# no JAX; ``tests/test_cli.py`` checks every choice against the config schema's allowed values,
# so a model added to a task's ``Literal`` and not listed here fails the tests.
SUMMARIES: dict[str, str] = {
    "next_item": "next-item recommendation over item sequences (leave-one-out, full ranking)",
    "relevance": "product search: BM25, bi-/cross-encoder, GBDT re-rankers, HNSW index",
    "ranker": "satisfaction ranker: click / purchase / dwell heads over impressions",
    "multi_behavior": "cart + buy -> buy recommendation (Taobao, EHCF's whole-data loss)",
    "attributes": "product attributes from title and photo features, fused",
    "product_retrieval": "attribute queries -> products: query tower + fused product tower",
}
_FUSION = {
    "model.fusion=text": "title features only (baseline)",
    "model.fusion=image": "photo features only (baseline)",
    "model.fusion=concat": "both projections side by side, then an MLP",
    "model.fusion=gated": "per-product softmax weights over the two modalities",
    "model.fusion=cross_attention": "title tokens attend over the photo's feature-map positions",
    "model.fusion=product": "element-wise product of the projections, then an MLP (a cheap bilinear)",
}
MODELS: dict[str, dict[str, str]] = {
    "next_item": {
        "model.name=sasrec": "SASRec: causal self-attention over the history (Kang & McAuley 2018)",
        "model.name=gru4rec": "GRU4Rec: a GRU or LSTM (model.rnn_cell) over the history (Hidasi et al. 2016)",
        "model.item_fusion=id": "item = its ID embedding (default)",
        "model.item_fusion=add": "item = ID embedding + projected MiniLM title vector (+ title words)",
        "model.item_fusion=gated": "item = gated mix of ID embedding and title vector",
        "model.item_fusion=text_only": "item = projected title vector, no ID embedding",
    },
    "relevance": {
        "serve.reranker=gbdt_fast": "LightGBM over lexical, BM25, both cosines and the product prior",
        "serve.reranker=gbdt": "the same + the cross-encoder's score (best offline, slow)",
        "serve.reranker=cross_encoder": "MiniLM fine-tuned on (query, title) pairs",
        "serve.reranker=bi_encoder": "residual adapters on frozen MiniLM sentence vectors",
    },
    "ranker": {
        "model.interaction=autoint": "AutoInt: a transformer over the feature fields",
        "model.interaction=dcnv2": "DCN-v2: a cross network over the field embeddings",
        "model.sharing=mmoe": "multi-gate mixture of experts under the heads",
        "model.sharing=shared_bottom": "one shared bottom under the heads",
        "loss.cvr=esmm": "purchase as pCTR x pCVR over all impressions (ESMM)",
        "loss.cvr=clicked_only": "purchase trained on clicked impressions only (the classic baseline)",
    },
    "multi_behavior": {
        "behaviors=[cart,buy]": "one user/item embedding for both behaviours, a learned bonus on carted items",
        "behaviors=[buy]": "the buy-only ablation of the same model",
    },
    "attributes": _FUSION,
    "product_retrieval": _FUSION,
}


def task_class(name: Any) -> type:
    """The task class registered as ``name``; an unknown name lists the registered ones."""
    from ecomjax.config import ConfigError

    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task: {name!r} is not a registered task; tasks: {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
