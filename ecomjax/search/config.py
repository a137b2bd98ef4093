"""Configuration of a product-search run (``task: search`` at the top of a YAML file).

Same rules as the recommender configs (``ecomjax.config``): every key is checked, an unknown key
or a value of the wrong type is an error naming it, and dotted overrides work
(``ecomjax train configs/search_homedepot.yaml cross_encoder.enabled=false``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ecomjax.config import ConfigError, build_section, config_tree


@dataclass
class RelevanceDataConfig:
    path: str = "homedepot/train.csv"  # relative paths also tried under $ECOMJAX_DATA_DIR
    test_path: str | None = None  # score this file as the test set instead of a split of ``path``
    valid_fraction: float = 0.1  # of the queries
    test_fraction: float = 0.2  # of the queries
    # share of the training queries the neural models never see: the GBDT is trained on them,
    # so the model scores it learns from are out-of-sample, as they are on new queries
    stack_fraction: float = 0.3
    low: float = 1.0  # grade range of the file
    high: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.stack_fraction < 1:
            raise ConfigError(f"data.stack_fraction: {self.stack_fraction} must be in (0, 1)")
        if not (0 < self.valid_fraction < 1 and 0 <= self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ConfigError(f"data.valid_fraction ({self.valid_fraction}) and data.test_fraction "
                              f"({self.test_fraction}) must be fractions summing to less than 1")
        if self.test_fraction == 0 and not self.test_path:
            raise ConfigError("data.test_fraction is 0 and data.test_path is not set: nothing to test on")
        if not self.low < self.high:
            raise ConfigError(f"data.low ({self.low}) must be below data.high ({self.high})")


@dataclass
class BM25Config:
    k1: float = 1.5
    b: float = 0.75


@dataclass
class BiEncoderSection:
    hidden: int = 512
    dropout: float = 0.1
    contrastive_weight: float = 0.5
    positive_grade: float = 2.5
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 4


@dataclass
class CrossEncoderSection:
    enabled: bool = True  # the best offline model; off: the GBDT goes without its score
    max_length: int = 40
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    patience: int = 1
    # LoRA (ecomjax.efficiency.lora): 0 = full fine-tuning; N = rank-N adapters on the layers
    # matching lora_targets, only adapters and head trained, merged into the weights when saved
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = r".*(attention/(query|key|value|output)|intermediate|output)"
    lora_quantize_base: bool = False  # QLoRA: the frozen encoder in int8 while the adapters train
    # regex of encoder parameter paths trained beside the adapters, e.g. LayerNorms, biases and the
    # segment embeddings (ecomjax.efficiency.lora.BERT_NORMS_BIASES_SEGMENTS); "" = adapters only
    lora_also_train: str = ""
    # LoRA+ (Hayou et al. 2024): B's learning rate = ratio x A's (16 in the paper). On Home Depot
    # (12,000 pairs, one epoch) it did not help: lr 2e-4 x 16 reached valid RMSE 0.478, 5e-4 x 16
    # 0.535, plain LoRA at 1.4e-3 0.467 (benchmarks/efficiency.py notes)
    lora_b_learning_rate_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not self.lora_b_learning_rate_ratio > 0:
            raise ConfigError(f"cross_encoder.lora_b_learning_rate_ratio: {self.lora_b_learning_rate_ratio} "
                              "must be > 0")


@dataclass
class GBDTConfig:
    num_leaves: int = 31
    learning_rate: float = 0.03
    max_rounds: int = 3000
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.8
    early_stopping_rounds: int = 100


@dataclass
class ServeConfig:
    candidates: int = 100  # ANN candidates re-ranked per query
    reranker: Literal["gbdt_fast", "gbdt", "cross_encoder", "bi_encoder"] = "gbdt_fast"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    personalization_weight: float = 0.0  # blend of a user-history model's score (see SearchPipeline)


@dataclass
class SearchConfig:
    task: Literal["search"] = "search"
    workdir: str = "runs/search"
    seed: int = 0
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    data: RelevanceDataConfig = field(default_factory=RelevanceDataConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    bi_encoder: BiEncoderSection = field(default_factory=BiEncoderSection)
    cross_encoder: CrossEncoderSection = field(default_factory=CrossEncoderSection)
    gbdt: GBDTConfig = field(default_factory=GBDTConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



def load_search_config(source: str | Path | dict | SearchConfig,
                       overrides: list[str] | dict[str, Any] | None = None) -> SearchConfig:
    return build_section(SearchConfig, config_tree(source, overrides))
