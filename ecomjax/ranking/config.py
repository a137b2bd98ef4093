"""Configuration of a satisfaction-ranker run (``task: ranker`` at the top of a YAML file).

Same rules as every ecomjax config: each key is checked, an unknown key or a bad value fails at
once naming it, dotted overrides work (``ecomjax train configs/ranker_synthetic.yaml
model.interaction=dcnv2 loss.cvr=clicked_only``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ecomjax.config import ConfigError, build_section, config_tree
from ecomjax.data.impressions import ImpressionConfig
from ecomjax.data.synthetic import SyntheticConfig
from ecomjax.tasks.fit import FitConfig


@dataclass
class RankerDataConfig:
    # synthetic: impressions drawn from the synthetic shop (true probabilities known);
    # ali_ccp / aliexpress / criteo: files in those public sample formats (see ranking.ctr_files)
    source: Literal["synthetic", "ali_ccp", "aliexpress", "criteo"] = "synthetic"
    path: str | None = None  # training file; relative paths also tried under $ECOMJAX_DATA_DIR
    valid_path: str | None = None  # else a share of the training requests
    test_path: str | None = None  # else a share of the training requests
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    # feature fields the models do not see (ablations, or a raw id that only memorises);
    # users and requests still group GAUC and NDCG
    drop_fields: list[str] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # the shop
    impressions: ImpressionConfig = field(default_factory=ImpressionConfig)

    def __post_init__(self) -> None:
        if self.source != "synthetic" and not self.path:
            raise ConfigError(f"data.source={self.source!r} needs data.path (the training file)")
        if not (0 < self.valid_fraction < 1 and 0 <= self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ConfigError(f"data.valid_fraction ({self.valid_fraction}) and data.test_fraction "
                              f"({self.test_fraction}) must be fractions summing to less than 1")


@dataclass
class RankerModelConfig:
    interaction: Literal["autoint", "dcnv2"] = "autoint"
    embed_dim: int = 16  # width of every field vector
    # DIN-style attention of a history sequence to the candidate's id in the same table
    # (e.g. history categories -> the item's category) and its exact-match share: three more
    # fields per such sequence
    target_attention: bool = True
    first_order: bool = True  # "wide" part: a scalar per id and numeric field, per task, added to each head
    pairwise: bool = True  # factorisation-machine term over the field vectors, per task, added to each head
    attention_dim: int = 32  # autoint: transformer width over the fields
    attention_layers: int = 2
    attention_heads: int = 2
    cross_layers: int = 3  # dcnv2
    cross_rank: int = 0  # dcnv2: 0 = full-rank cross matrices, N = low-rank U V
    deep: list[int] = field(default_factory=lambda: [256, 128])  # dcnv2: parallel deep network
    sharing: Literal["shared_bottom", "mmoe"] = "mmoe"
    experts: int = 4  # mmoe
    expert_hidden: list[int] = field(default_factory=lambda: [128])  # an expert (or the shared bottom)
    tower_hidden: list[int] = field(default_factory=lambda: [64])  # each task's tower
    dropout: float = 0.1
    # training: zero whole field vectors with this probability, so no single field (a user id
    # that memorises its few impressions) carries the prediction alone
    field_dropout: float = 0.0


@dataclass
class TaskWeights:
    click: float = 1.0
    purchase: float = 1.0
    dwell: float = 0.2  # squared error of log seconds, on clicked impressions only


@dataclass
class RankerLossConfig:
    # esmm: purchase learnt as pCTCVR = pCTR x pCVR over every impression (Ma et al., SIGIR 2018);
    # clicked_only: pCVR learnt on clicked impressions only (the sample-selection-biased baseline)
    cvr: Literal["esmm", "clicked_only"] = "esmm"
    weights: TaskWeights = field(default_factory=TaskWeights)


@dataclass
class SatisfactionConfig:
    """Ranking score = click x pCTR + purchase x pCTCVR + dwell_minutes x pCTR x E[dwell] / 60."""

    click: float = 1.0
    purchase: float = 5.0
    dwell_minutes: float = 0.5


@dataclass
class RankerBaselines:
    gbdt: bool = True  # LightGBM per head on the same features and splits
    clicked_only_cvr: bool = True  # a separate CVR model trained on clicked impressions only
    gbdt_rounds: int = 2000
    gbdt_leaves: int = 63


@dataclass
class RankerAdaptConfig:
    """Fine-tune a finished ranker on this run's data (a new market, a later period) instead of
    training one from scratch: ``init_from``'s parameters start the run (same fields and heads);
    with ``lora_rank`` > 0 only low-rank adapters on its dense layers train (qwix LoRA; embedding
    tables and the rest stay frozen) and are merged into the base weights before saving, so the
    workdir serves like any other."""

    init_from: str | None = None  # workdir of a finished ranker; null = train from scratch
    lora_rank: int = 0  # adapter rank; 0 = fine-tune every parameter
    lora_alpha: float = 16.0  # the update is scaled by alpha / rank
    # regex, full match of the module paths of the adapted layers: the nnx.Linear layers of the
    # interaction, experts, gates, towers and heads (embedding tables and wide terms stay frozen)
    lora_targets: str = "(interaction|experts|gates|towers|heads)/.*"
    # regex, full match of parameter paths (``embedding/tables/0/embedding``) of base parameters
    # trained beside the adapters (``LoraConfig.also_train``); empty = adapters only
    lora_also_train: str = ""


@dataclass
class RankerConfig:
    task: Literal["ranker"] = "ranker"
    workdir: str = "runs/ranker"
    seed: int = 0
    data: RankerDataConfig = field(default_factory=RankerDataConfig)
    model: RankerModelConfig = field(default_factory=RankerModelConfig)
    loss: RankerLossConfig = field(default_factory=RankerLossConfig)
    satisfaction: SatisfactionConfig = field(default_factory=SatisfactionConfig)
    train: FitConfig = field(default_factory=lambda: FitConfig(epochs=20, batch_size=1024, learning_rate=2e-3,
                                                               weight_decay=1e-5, patience=3))
    baselines: RankerBaselines = field(default_factory=RankerBaselines)
    adapt: RankerAdaptConfig = field(default_factory=RankerAdaptConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



def load_ranker_config(source: str | Path | dict | RankerConfig,
                       overrides: list[str] | dict[str, Any] | None = None) -> RankerConfig:
    return build_section(RankerConfig, config_tree(source, overrides))

