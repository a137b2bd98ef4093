"""The fashion catalogue experiments, set up once and run per fusion mode.

``FashionExperiment`` fixes everything an ablation must hold constant: the product-disjoint
split (stratified by article type), attribute vocabularies built on training products only,
the query sets (training queries over training products, with paraphrases; validation and test
queries composed over their own held-out products, test texts never seen in training), the
query embeddings, and the frozen encoder features. ``attributes(fusion)`` and
``retrieval(fusion)`` then train and score one product encoder each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ecomjax.data.fashion import (
    ATTRIBUTE_FIELDS,
    AttributeQuery,
    FashionCatalog,
    build_vocabularies,
    compose_queries,
    split_products,
)
from ecomjax.data.fashion_features import FashionFeatures
from ecomjax.models.fusion import FusionConfig
from ecomjax.tasks.attributes import AttributeResult, train_attribute_classifier
from ecomjax.tasks.fit import FitConfig
from ecomjax.tasks.retrieval import (
    CODE_FIELDS,
    RetrievalResult,
    attribute_codes,
    paraphrased,
    query_codes,
    train_two_tower,
    training_pairs,
)


@dataclass
class FashionSetup:
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_count: int = 20  # attribute values rarer than this in training join "other"
    train_queries: int = 6000  # distinct attribute combinations over training products
    paraphrases: int = 3  # wordings per training query
    pairs_per_query: int = 2  # relevant products paired with each training wording
    eval_queries: int = 500  # per held-out split
    fusion: FusionConfig = field(default_factory=FusionConfig)
    attribute_fit: FitConfig = field(default_factory=lambda: FitConfig(batch_size=128))
    # cross_attention's product tower reads 16 image positions per product: 15 epochs bound it
    retrieval_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=15, batch_size=256, patience=3))
    text_checkpoint: str = "sentence-transformers/all-MiniLM-L6-v2"


class FashionExperiment:
    def __init__(self, catalog: FashionCatalog, features: FashionFeatures, setup: FashionSetup,
                 *, cache: bool = True):
        from ecomjax.encoders.feature_cache import cached_text_embeddings

        self.setup = setup
        self.features = features
        products = catalog.subset(features.ids)
        split = split_products(products, setup.split, seed=setup.seed, stratify_by="article_type")
        self.rows = {name: features.rows(getattr(split, name)) for name in ("train", "valid", "test")}
        train_products = [products[r] for r in self.rows["train"]]
        self.vocabularies = build_vocabularies(train_products, setup.min_count)
        self.labels = {name: vocab.encode(products) for name, vocab in self.vocabularies.items()}
        self.num_classes = {name: len(v.classes) for name, v in self.vocabularies.items()}

        values: dict[str, dict[str, int]] = {f: {} for f in CODE_FIELDS}
        self.product_codes = attribute_codes(products, values)
        train_set = paraphrased(compose_queries(train_products, setup.train_queries, setup.seed + 1),
                                setup.paraphrases, setup.seed + 2)
        seen = set(train_set.texts)
        texts, owners = list(train_set.texts), list(train_set.queries)
        self.query_rows: dict[str, np.ndarray] = {"train": np.arange(len(texts))}
        self.dropped_seen_queries: dict[str, int] = {}
        for offset, name in enumerate(("valid", "test")):
            pool = [products[r] for r in self.rows[name]]
            composed = compose_queries(pool, setup.eval_queries, setup.seed + 10 + offset)
            held_out = [q for q in composed if q.text not in seen]
            self.dropped_seen_queries[name] = len(composed) - len(held_out)
            self.query_rows[name] = np.arange(len(texts), len(texts) + len(held_out))
            texts += [q.text for q in held_out]
            owners += held_out
        self.query_texts: list[str] = texts
        self.queries: list[AttributeQuery] = owners
        self.query_codes = query_codes(owners, values)
        self.query_embeddings = cached_text_embeddings(texts, setup.text_checkpoint, enabled=cache)
        self.pairs = training_pairs(self.query_codes[self.query_rows["train"]], self.product_codes,
                                    self.rows["train"], setup.pairs_per_query, setup.seed + 3)

    def fusion_config(self, fusion: str) -> FusionConfig:
        return dataclasses.replace(self.setup.fusion, fusion=fusion,
                                   text_dim=self.features.text_tokens.shape[-1],
                                   image_dim=self.features.image_map.shape[-1])

    def attributes(self, fusion: str) -> AttributeResult:
        return train_attribute_classifier(self.features, self.labels, self.num_classes, self.rows,
                                          self.fusion_config(fusion), self.setup.attribute_fit)

    def retrieval(self, fusion: str) -> RetrievalResult:
        eval_sets = {name: (self.query_rows[name], self.rows[name]) for name in ("valid", "test")}
        return train_two_tower(self.features, self.product_codes, self.query_embeddings,
                               self.query_codes, self.pairs, eval_sets, self.fusion_config(fusion),
                               self.setup.retrieval_fit)

    def summary(self) -> dict:
        return {
            "products": {name: len(rows) for name, rows in self.rows.items()},
            "classes": self.num_classes,
            "queries": {name: len(rows) for name, rows in self.query_rows.items()},
            "training_pairs": len(self.pairs),
            "eval_queries_dropped_as_seen_in_training": self.dropped_seen_queries,
            "attributes": list(ATTRIBUTE_FIELDS),
        }
