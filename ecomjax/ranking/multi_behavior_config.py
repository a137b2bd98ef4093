"""Configuration of a multi-behaviour recommender run (``task: multi_behavior`` in a YAML file).

Same rules as every ecomjax config (``ecomjax.config``): each key is checked, an unknown key or a
value of the wrong type is an error naming it, and dotted overrides work
(``behaviors=[buy] train.epochs=50 model.dim=32``). The defaults are the Taobao run of
``configs/ranker_taobao.yaml``; ``ecomjax.ranking.multi_behavior`` documents the model and loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ecomjax.config import ConfigError, build_section, config_tree
from ecomjax.data.taobao import TARGET_BEHAVIOR

Behavior = Literal["cart", "buy"]


@dataclass
class MultiBehaviorDataConfig:
    path: str = "taobao"  # directory of buy.train.txt, buy.test.txt, cart.csv; relative: under $ECOMJAX_DATA_DIR
    # share of the users with one random training purchase held out (and not trained on) as the
    # validation target for early stopping
    valid_users: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.valid_users < 1:
            raise ConfigError(f"data.valid_users: {self.valid_users} must be in (0, 1)")


@dataclass
class MultiBehaviorModelConfig:
    dim: int = 128  # width of the user and item embeddings shared by all behaviours
    # add the mean embedding of the user's training items (all trained behaviours) to the user
    # vector (SVD++-style); measured on Taobao it helps (see ecomjax.ranking.multi_behavior)
    use_history: bool = True
    # a learned purchase-score bonus for the items the user carted (one scalar per auxiliary
    # behaviour, trained by the same whole-data loss; see ecomjax.ranking.multi_behavior)
    interaction_bonus: bool = True
    dropout: float = 0.5  # on the user vector while training (EHCF keeps 0.5)
    init_std: float = 0.01  # normal init of the embedding tables

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"model.dim: {self.dim} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: {self.dropout} must be in [0, 1)")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std: {self.init_std} must be > 0")


@dataclass
class MultiBehaviorTrainConfig:
    epochs: int = 60  # upper bound; early stopping usually ends sooner
    batch_size: int = 2048  # users per step (the loss covers each user's row of every behaviour)
    optimizer: Literal["adagrad", "adamw"] = "adagrad"  # EHCF uses Adagrad
    learning_rate: float = 0.05
    weight_decay: float = 0.0  # decoupled decay of every parameter
    patience: int = 3  # evaluations without a better validation ndcg@10 before stopping
    eval_every: int = 2  # epochs between validation evaluations
    progress: bool = True  # one progress line per evaluation on stderr

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: {getattr(self, name)} must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate: {self.learning_rate} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: {self.weight_decay} must be >= 0")


@dataclass
class MultiBehaviorEvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 1024  # users scored against the whole catalogue at once
    monitor: str = "ndcg@10"  # validation metric for early stopping and the kept epoch

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks: {self.ks} must be a non-empty list of integers >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size: {self.batch_size} must be >= 1")
        name, _, k = self.monitor.partition("@")
        if name not in ("hr", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"eval.monitor: {self.monitor!r} must be hr@k or ndcg@k with k in "
                              f"eval.ks {self.ks}")


def _default_loss_weights() -> dict[str, float]:
    # measured on the validation split with the interaction bonus; EHCF's Taobao coefficients
    # (view 1/6, cart 4/6, buy 1/6) suit the model without the bonus better
    return {"cart": 1.0 / 3.0, "buy": 2.0 / 3.0}


def _default_negative_weights() -> dict[str, float]:
    return {"cart": 0.01, "buy": 0.01}  # EHCF's Taobao weight of the unobserved pairs


@dataclass
class BaselinesConfig:
    popularity: bool = True  # most-bought items (training purchases only)
    mf: bool = True  # plain MF on purchases: dot product, no behaviour vector, same loss
    # the user's carted items first (most-bought first), then the most-bought items: the rule
    # that the learned models must beat to show they use carts for more than a lookup
    cart_then_popularity: bool = True


@dataclass
class MultiBehaviorConfig:
    task: Literal["multi_behavior"] = "multi_behavior"
    workdir: str = "runs/ranker_taobao"
    seed: int = 0  # initialisation, dropout, shuffling and the validation split
    data: MultiBehaviorDataConfig = field(default_factory=MultiBehaviorDataConfig)
    model: MultiBehaviorModelConfig = field(default_factory=MultiBehaviorModelConfig)
    behaviors: list[Behavior] = field(default_factory=lambda: ["cart", "buy"])  # trained; must include buy
    # behaviour -> weight of its loss term; behaviours not trained are ignored
    behavior_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    # behaviour -> weight c0 of every unobserved (user, item) pair in the whole-data loss
    negative_weights: dict[str, float] = field(default_factory=_default_negative_weights)
    train: MultiBehaviorTrainConfig = field(default_factory=MultiBehaviorTrainConfig)
    eval: MultiBehaviorEvalConfig = field(default_factory=MultiBehaviorEvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    compare_buy_only: bool = True  # also train the same model on buy alone (the ablation)

    def __post_init__(self) -> None:
        if TARGET_BEHAVIOR not in self.behaviors:
            raise ConfigError(f"behaviors: {self.behaviors} must include {TARGET_BEHAVIOR!r}, "
                              "the behaviour that is evaluated")
        if len(set(self.behaviors)) != len(self.behaviors):
            raise ConfigError(f"behaviors: {self.behaviors} lists a behaviour twice")
        allowed = list(Behavior.__args__)
        for section in ("behavior_weights", "negative_weights"):
            for name, value in getattr(self, section).items():
                if name not in allowed:
                    raise ConfigError(f"{section}.{name}: unknown behaviour; allowed: {allowed}")
                if value < 0 or (section == "negative_weights" and value >= 1):
                    raise ConfigError(f"{section}.{name}: {value} must be in "
                                      + ("[0, 1)" if section == "negative_weights" else "[0, inf)"))
        if all(self.behavior_weights.get(b, 0.0) == 0 for b in self.behaviors):
            raise ConfigError("behavior_weights: every trained behaviour has weight 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



def load_multi_behavior_config(source: str | Path | dict | MultiBehaviorConfig | None = None,
                               overrides: list[str] | dict[str, Any] | None = None
                               ) -> MultiBehaviorConfig:
    """Resolve a config from a YAML path, a mapping or a config, then apply dotted overrides."""
    return build_section(MultiBehaviorConfig, config_tree(source, overrides))
