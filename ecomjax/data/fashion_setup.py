"""The fashion catalogue prepared for its two tasks (``attributes`` and ``product_retrieval``).

Everything an ablation over fusion modes must hold constant is fixed here, once, from the
``data`` section and the run's seed: the product-disjoint split (stratified by article type),
attribute vocabularies built on training products only, the frozen encoder features (MiniLM
token states of the colour-free titles, EfficientNet-Lite0 feature maps of the photos, cached on
disk by content), and for retrieval the query sets: training queries over training products
with paraphrases, validation and test queries composed over their own held-out products (a test
wording never seen in training), their MiniLM sentence embeddings, and the training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ecomjax.config import AT_LEAST_1, Check, ConfigError
from ecomjax.data.fashion import ATTRIBUTE_FIELDS, FashionCatalog, Product, read_fashion_catalog
from ecomjax.data.fashion_features import FashionFeatures, encode_catalog
from ecomjax.data.fashion_queries import (
    CODE_FIELDS,
    AttributeQuery,
    attribute_codes,
    compose_queries,
    paraphrased,
    query_codes,
    training_pairs,
)
from ecomjax.data.fashion_splits import Vocabulary, build_vocabularies, split_products
from ecomjax.errors import InputError


@dataclass
class FashionDataConfig:
    """The ``data`` section of the fashion tasks."""

    path: str = "fashion-products"  # styles.csv + images-128.zip; relative paths also tried under $ECOMJAX_DATA_DIR
    max_products: int = 0  # 0 = every product; N = the first N of styles.csv (quick runs, tests)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / valid / test products
    min_count: int = 20  # attribute values rarer than this in training join "other"
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # titles' token states, queries' embeddings
    image_size: int = 128  # the catalogue photos' native size: EfficientNet runs at it (4x4 maps)
    cache: bool = True  # keep the frozen features on disk (keyed by content: weights, titles, archive)
    # product_retrieval only
    train_queries: int = 6000  # distinct attribute combinations over training products
    paraphrases: int = 3  # wordings per training query
    pairs_per_query: int = 2  # relevant products paired with each training wording
    eval_queries: int = 500  # per held-out split

    RANGES: ClassVar[dict[str, Check]] = {
        "max_products": (lambda v: v >= 0, "an integer >= 0 (0 = all)"), "min_count": AT_LEAST_1,
        "image_size": (lambda v: v >= 32, "an integer >= 32"), "train_queries": AT_LEAST_1,
        "paraphrases": AT_LEAST_1, "pairs_per_query": AT_LEAST_1, "eval_queries": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"data.split: {self.split} must be three fractions > 0 summing to 1")


@dataclass
class FashionData:
    """The prepared catalogue: row ``r`` of every array is ``features.ids[r]``."""

    catalog: FashionCatalog
    features: FashionFeatures
    products: list[Product]
    rows: dict[str, np.ndarray]  # split -> product rows
    vocabularies: dict[str, Vocabulary]
    labels: dict[str, np.ndarray]  # attribute -> [N] class index or MISSING
    product_codes: np.ndarray  # [N, len(CODE_FIELDS)] attribute codes (retrieval relevance)
    query_texts: list[str] = field(default_factory=list)
    queries: list[AttributeQuery] = field(default_factory=list)
    query_rows: dict[str, np.ndarray] = field(default_factory=dict)  # split -> query rows
    query_codes: np.ndarray | None = None
    query_embeddings: np.ndarray | None = None  # [Q, D] MiniLM sentence embeddings
    pairs: np.ndarray | None = None  # [P, 2] training (query row, product row)
    dropped_seen_queries: dict[str, int] = field(default_factory=dict)
    values: dict[str, dict[str, int]] = field(default_factory=dict)  # attribute value -> code

    @property
    def num_classes(self) -> dict[str, int]:
        return {name: len(v.classes) for name, v in self.vocabularies.items()}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"products": {name: len(rows) for name, rows in self.rows.items()},
                               "classes": self.num_classes, "attributes": list(ATTRIBUTE_FIELDS),
                               "feature_shapes": {"text_tokens": list(self.features.text_tokens.shape),
                                                  "image_map": list(self.features.image_map.shape)}}
        if self.queries:
            out.update({"queries": {name: len(rows) for name, rows in self.query_rows.items()},
                        "training_pairs": len(self.pairs),
                        "eval_queries_dropped_as_seen_in_training": self.dropped_seen_queries})
        return out


def read_catalog(config: FashionDataConfig) -> tuple[FashionCatalog, np.ndarray]:
    """The catalogue and the product ids a run uses (``max_products`` first rows)."""
    catalog = read_fashion_catalog(config.path)
    ids = catalog.ids[: config.max_products] if config.max_products else catalog.ids
    return catalog, ids


def prepare_fashion(config: FashionDataConfig, seed: int, *, queries: bool, progress: bool = False) -> FashionData:
    """Split, vocabularies, labels and features; with ``queries`` the retrieval query sets too."""
    catalog, ids = read_catalog(config)
    features = encode_catalog(catalog, ids, text_checkpoint=config.text_encoder, image_size=config.image_size,
                              cache=config.cache, progress=progress)
    products = catalog.subset(features.ids)
    split = split_products(products, tuple(config.split), seed=seed, stratify_by="article_type")
    rows = {name: features.rows(getattr(split, name)) for name in ("train", "valid", "test")}
    for name, part in rows.items():
        if len(part) == 0:
            raise InputError(f"data: the {name} split holds no product; raise data.max_products")
    vocabularies = build_vocabularies([products[r] for r in rows["train"]], config.min_count)
    values: dict[str, dict[str, int]] = {f: {} for f in CODE_FIELDS}
    data = FashionData(catalog, features, products, rows, vocabularies,
                       {name: vocab.encode(products) for name, vocab in vocabularies.items()},
                       attribute_codes(products, values), values=values)
    if queries:
        _add_queries(data, config, seed)
    return data


def _add_queries(data: FashionData, config: FashionDataConfig, seed: int) -> None:
    from ecomjax.encoders.feature_cache import cached_text_embeddings

    products, rows = data.products, data.rows
    train_products = [products[r] for r in rows["train"]]
    train_set = paraphrased(compose_queries(train_products, config.train_queries, seed + 1), config.paraphrases,
                            seed + 2)
    seen = set(train_set.texts)
    texts, owners = list(train_set.texts), list(train_set.queries)
    data.query_rows = {"train": np.arange(len(texts))}
    for offset, name in enumerate(("valid", "test")):
        pool = [products[r] for r in rows[name]]
        composed = compose_queries(pool, config.eval_queries, seed + 10 + offset)
        held_out = [q for q in composed if q.text not in seen]
        data.dropped_seen_queries[name] = len(composed) - len(held_out)
        data.query_rows[name] = np.arange(len(texts), len(texts) + len(held_out))
        texts += [q.text for q in held_out]
        owners += held_out
    data.query_texts, data.queries = texts, owners
    data.query_codes = query_codes(owners, data.values)
    data.query_embeddings = cached_text_embeddings(texts, config.text_encoder, enabled=config.cache)
    data.pairs = training_pairs(data.query_codes[data.query_rows["train"]], data.product_codes, rows["train"],
                                config.pairs_per_query, seed + 3)
