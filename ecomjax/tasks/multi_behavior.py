"""Multi-behaviour recommendation (add-to-cart + purchase -> purchase) on the EHCF Taobao data.

Model (``MultiBehaviorRecommender``): users and items have one embedding each, shared by every
behaviour, and behaviour ``b`` owns a prediction vector ``h_b`` (EHCF's ``H``):
``score_b(u, i) = sum_d p_ud q_id h_bd``, so cart data shapes the vectors that rank purchases.
Scores factorise (``P @ (Q * h_b).T``): every user is ranked against the whole catalogue.
Two measured additions, both on by default:

* ``use_history``: ``p_u`` adds the mean embedding of the user's training items (SVD++-style);
* ``interaction_bonus``: the purchase score adds a learned scalar on the items the user carted.
  17% of Taobao's test purchases were carted by the buyer, and "carted items first, then the
  most bought" alone reaches HR@10 0.167; a low-rank score cannot memorise a user's four carts,
  so without the bonus the model stays below that rule. The bonus is a sparse add on top of
  the factorised scores and is trained by the same loss (below).

Loss: EHCF's whole-data ("non-sampling") weighted regression. Every (user, item) pair is a
regression example: observed pairs have target 1 and weight 1, unobserved ones target 0 and a
small weight ``c0_b``. Summed over all items the unobserved part needs no sampling:
``c0 * sum_{d,d'} (P^T P)_{dd'} (Q^T Q)_{dd'} h_d h_d'`` costs O((users + items) d^2); observed
pairs are corrected by ``(1 - c0) r^2 - 2 r``. A step takes a batch of users, their observed pairs
of every trained behaviour (flat, not padded per user) and the whole item table. On two CPU
cores an epoch over the 48,749 users takes a few seconds, where a full softmax over 39,493 items
for each of the 400k pairs would take minutes.

Protocol (EHCF's, read from ``code/EHCF.py`` ``dev_step``, github.com/chenchongthu/EHCF): each
user's one ``buy.test`` item is ranked against the whole catalogue (39,493 items: EHCF counts the
distinct ``sid`` of buy.train + buy.test, here equal to max sid + 1); the user's ``buy.train``
items get -inf first (``pre[train_m[u].nonzero()] = -inf``); carted items are *not* excluded.
EHCF's code prints recall/NDCG at 50/100/200 (recall = HR with one test item, as the author
answers in EHCF issue #14); the paper reports HR/NDCG@10/50/100. Ties count against the target
(``ecomjax.eval.ranking.target_rank``); only popularity's zero-count items tie.

Validation: ``data.valid_users`` of the users with >= 3 purchases (all Taobao users; random,
``seed``) have one random training purchase held out of training; it is their early-stopping
target, ranked with their other training purchases excluded. The test excludes all of
buy.train, as EHCF does. The parameters of the best validation evaluation are kept.

Baselines on the same protocol: popularity (training purchase counts), cart-then-popularity (the
rule above), MF (the same model on purchases with a plain dot product: no behaviour vector, no
history, no bonus, trained with the same whole-data loss: an eALS/ENMF-style MF, not BPR), and
the buy-only ablation (the configured model and hyper-parameters with ``behaviors: [buy]``).

Published numbers: the EHCF README gives its Taobao settings (negative weight 0.01, loss
coefficients view/cart/buy 1/6, 4/6, 1/6, Adagrad lr 0.05, d 64, dropout 0.5) and corrects the
paper's Beibei HR@10/NDCG@10 to 0.1551/0.0831. The Taobao row of the paper's Table 2 could not be
retrieved here, so none is quoted; EHCF's Taobao also had a view behaviour the public files lack.

Modules: the model is ``ecomjax.models.multi_behavior``, the loss
``ecomjax.tasks.multi_behavior_loss``, full-catalogue metrics ``ecomjax.eval.full_ranking``, the
files and the validation split ``ecomjax.data.taobao``; this one is the task: stages (the model,
the buy-only ablation, MF), their batches, evaluation, rule baselines and the run's report.

Measured on buy.test before the move onto the one loop (``configs/ranker_taobao.yaml``, d 128,
2 shared CPU cores, whole run 6 min; standard error of HR@10 about 0.002; the current numbers
are in ``benchmarks/results/ranker.json``):

================================================  ======  =======  =======
model                                             HR@10   NDCG@10  train s
================================================  ======  =======  =======
popularity                                        0.0059  0.0035   -
MF (purchases)                                    0.0400  0.0230   89
buy-only ablation (same model, ``[buy]``)         0.0387  0.0227   63
cart + buy, no bonus, EHCF weights 4/6, 1/6       0.1195  0.0757   50
cart-then-popularity rule                         0.1666  0.1090   -
cart + buy, bonus, no history                     0.1862  0.1197   141
cart + buy (default: bonus + history)             0.1902  0.1209   157
================================================  ======  =======  =======
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import ConfigError, EvalConfig, RunConfig, TrainConfig
from ecomjax.data.preprocess import PreprocessConfig
from ecomjax.data.source import ColumnsConfig, read_interaction_sequences
from ecomjax.data.taobao import (
    TARGET_BEHAVIOR,
    Interactions,
    MultiBehaviorData,
    ValidationSplit,
    load_taobao,
    padded_items,
    split_validation,
)
from ecomjax.eval.full_ranking import full_ranking_metrics
from ecomjax.models.multi_behavior import MultiBehaviorRecommender
from ecomjax.tasks.base import Stage, Task
from ecomjax.tasks.multi_behavior_loss import LossSpec, whole_data_loss

Behavior = Literal["cart", "buy"]


def _default_behavior_values() -> dict[str, str]:
    return {"buy": "buy", "cart": "cart"}


@dataclass
class MultiBehaviorDataConfig:
    # ehcf: the directory of buy.train.txt, buy.test.txt, cart.csv; delimited / parquet: a
    # timestamped behaviour log, split in time (ecomjax.data.behavior_log); relative paths are
    # also tried under $ECOMJAX_DATA_DIR
    path: str = "taobao"
    format: Literal["ehcf", "delimited", "parquet"] = "ehcf"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)  # a log's user, item, time, behavior columns
    delimiter: str = ","
    header: bool = True
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # cleaning steps of a log
    behavior_values: dict[str, str] = field(default_factory=_default_behavior_values)  # behaviour -> value in the log
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
    # vector (SVD++-style); measured on Taobao it helps (see ecomjax.tasks.multi_behavior)
    use_history: bool = True
    # a learned purchase-score bonus for the items the user carted (one scalar per auxiliary
    # behaviour, trained by the same whole-data loss; see ecomjax.tasks.multi_behavior)
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
class MultiBehaviorConfig(RunConfig):
    task: Literal["multi_behavior"] = "multi_behavior"
    workdir: str = "runs/ranker_taobao"
    data: MultiBehaviorDataConfig = field(default_factory=MultiBehaviorDataConfig)
    model: MultiBehaviorModelConfig = field(default_factory=MultiBehaviorModelConfig)
    behaviors: list[Behavior] = field(default_factory=lambda: ["cart", "buy"])  # trained; must include buy
    # behaviour -> weight of its loss term; behaviours not trained are ignored
    behavior_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    # behaviour -> weight c0 of every unobserved (user, item) pair in the whole-data loss
    negative_weights: dict[str, float] = field(default_factory=_default_negative_weights)
    # EHCF's optimizer: Adagrad at a constant rate, no clipping; early stopping on eval.monitor
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=60, batch_size=2048, optimizer="adagrad", learning_rate=0.05, warmup_steps=0, decay="constant",
        grad_clip_norm=0.0, early_stopping_patience=3, eval_every_epochs=2))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(batch_size=1024))
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



def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class BehaviorBatches:
    """Per epoch: a random order of the users (a pure function of ``(seed, epoch)``) cut into
    steps of ``batch`` users, and every behaviour's pairs grouped by step into ``capacity``
    slots (flat, so a user with 60 purchases costs 60 gathers, not the width of the largest row
    for everyone). The users left over wait for the next epoch, as in EHCF. The capacity is 15%
    above an average step's pairs, rounded to 256; an epoch that needs more gets more (one more
    compilation)."""

    def __init__(self, pairs: list[Interactions], bought: list[np.ndarray], num_users: int, num_items: int,
                 batch: int, seed: int, salt: int):
        self.pairs, self.bought, self.num_users, self.num_items = pairs, bought, num_users, num_items
        self.batch, self.steps = batch, num_users // batch
        self.seed, self.salt = seed, salt
        self.capacity = [_round_up(int(1.15 * len(p) * batch / num_users) + 1, 256) for p in pairs]

    def epoch(self, epoch: int) -> grain.MapDataset:
        order = np.random.default_rng([self.seed, epoch, self.salt]).permutation(self.num_users)
        position = np.empty(self.num_users, dtype=np.int64)
        position[order] = np.arange(self.num_users)
        users = order[: self.steps * self.batch].reshape(self.steps, self.batch).astype(np.int32)
        grouped = []
        for b, pairs in enumerate(self.pairs):
            pos = position[pairs.users]
            keep = pos < self.steps * self.batch
            step, row, items = pos[keep] // self.batch, pos[keep] % self.batch, pairs.items[keep]
            sort = np.argsort(step, kind="stable")
            step, row, items, bought = step[sort], row[sort], items[sort], self.bought[b][keep][sort]
            counts = np.bincount(step, minlength=self.steps)
            capacity = max(self.capacity[b], _round_up(int(counts.max(initial=0)), 256))
            slot = np.arange(len(step)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[step]
            rows = np.zeros((self.steps, capacity), np.int32)
            padded = np.full((self.steps, capacity), self.num_items, np.int32)
            flags = np.zeros((self.steps, capacity), np.int8)
            rows[step, slot], padded[step, slot], flags[step, slot] = row, items, bought
            grouped.append((rows, padded, flags))

        def batch(index: int) -> dict[str, np.ndarray]:
            out = {"users": users[index]}
            for b, (rows, padded, flags) in enumerate(grouped):
                out[f"rows{b}"], out[f"items{b}"], out[f"bought{b}"] = rows[index], padded[index], flags[index]
            return out

        return grain.MapDataset.range(self.steps).map(batch)


def _pair_keys(pairs: Interactions, num_items: int) -> np.ndarray:
    return pairs.users.astype(np.int64) * num_items + pairs.items


def _vectors(graphdef, state, users, history):
    model = nnx.merge(graphdef, state)
    if history is None:
        return model.user_vectors(users)
    rows = jnp.broadcast_to(jnp.arange(users.shape[0])[:, None], history.shape)
    return model.user_vectors(users, (rows.reshape(-1), history.reshape(-1)))


_jitted_vectors = jax.jit(_vectors, static_argnums=(0,))


def all_user_vectors(model: MultiBehaviorRecommender, users: np.ndarray,
                     history: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """``p_u`` of ``users`` (``history``: ``[num_users, H]`` padded training items, row = user id)."""
    graphdef, state = nnx.split(model)
    out = []
    size = min(batch_size, len(users))
    for start in range(0, len(users), size):
        chunk = users[start:start + size]
        count = len(chunk)
        chunk = np.pad(chunk, (0, size - count))  # one compiled shape
        hist = history[chunk] if (model.use_history and history is not None) else None
        out.append(np.asarray(_jitted_vectors(graphdef, state, chunk, hist))[:count])
    return np.concatenate(out)


def evaluate_model(model: MultiBehaviorRecommender, targets: Interactions, exclude: np.ndarray,
                   history: np.ndarray | None, ks: tuple[int, ...], batch_size: int,
                   auxiliary: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Full-ranking purchase metrics of ``targets``.

    ``exclude``, ``history`` and ``auxiliary[name]`` are padded item lists indexed by user id: the
    items ranked out, the training items (``use_history``) and each auxiliary behaviour's items
    (``interaction_bonus``).
    """
    vectors = all_user_vectors(model, targets.users, history)
    boost = None
    if model.interaction_bonus is not None and auxiliary:
        bonus = np.asarray(model.bonus())
        items = [auxiliary[name][targets.users] for name in model.auxiliary]
        values = [np.full(i.shape, bonus[a], np.float32) for a, i in enumerate(items)]
        boost = (np.concatenate(items, axis=1), np.concatenate(values, axis=1))
    return full_ranking_metrics(vectors, np.asarray(model.item_matrix(TARGET_BEHAVIOR)), targets.items,
                                exclude[targets.users], ks, batch_size, boost)


def popularity_metrics(buy: Interactions, targets: Interactions, exclude: np.ndarray, num_items: int,
                       ks: tuple[int, ...], batch_size: int, first: np.ndarray | None = None) -> dict[str, float]:
    """Rank by purchase count; ``first`` (``[len(targets), M]`` padded items, row per target)
    are put above every other item, in purchase-count order among themselves."""
    counts = np.bincount(buy.items, minlength=num_items).astype(np.float32)[:, None]
    boost = None
    if first is not None:
        boost = (first, np.full(first.shape, counts.max() + 1.0, np.float32))
    return full_ranking_metrics(np.ones((len(targets), 1), np.float32), counts, targets.items,
                                exclude, ks, batch_size, boost)


@dataclass
class _Prepared:
    """The data every stage of a run reads: the files, the validation split, the lists of items
    each user's ranking excludes (validation: its other training purchases; test: all of them)."""

    data: MultiBehaviorData
    split: ValidationSplit
    fit_train: dict[str, Interactions]
    valid_exclude: np.ndarray
    test_exclude: np.ndarray


class BehaviorStage(Stage):
    """One recommender of the run: the configured model on ``behaviors`` (``model``), the same
    model on purchases alone (``buy_only``), or plain MF on purchases (``mf``)."""

    def __init__(self, task: MultiBehaviorTask, spec: dict[str, Any], name: str, behaviors: list[str],
                 plain_mf: bool = False):
        config = task.config
        self.task, self.config, self.name, self.behaviors, self.plain_mf = task, config, name, behaviors, plain_mf
        self.num_users, self.num_items = spec["num_users"], spec["num_items"]
        batch = min(config.train.batch_size, self.num_users)
        self.train = config.train if batch == config.train.batch_size else _replace(config.train, batch_size=batch)
        self.monitor = config.eval.monitor
        self.use_history = config.model.use_history and not plain_mf
        self.bonus = config.model.interaction_bonus and not plain_mf
        self.spec = LossSpec(tuple(behaviors), tuple(config.behavior_weights.get(b, 0.0) for b in behaviors),
                             tuple(config.negative_weights.get(b, 0.0) for b in behaviors), config.model.dropout)
        self.prepared = task.prepared
        if self.prepared is not None:
            p = self.prepared
            pairs = [p.fit_train[b] for b in behaviors]
            bought_keys = _pair_keys(p.fit_train[TARGET_BEHAVIOR], self.num_items)
            bought = [np.isin(_pair_keys(x, self.num_items), bought_keys).astype(np.int8) for x in pairs]
            self.auxiliary = {b: padded_items(p.fit_train[b], self.num_users, self.num_items)
                              for b in behaviors if b != TARGET_BEHAVIOR}
            self.history = None
            if self.use_history:  # every trained interaction, as the loss sees it
                self.history = padded_items(Interactions(np.concatenate([x.users for x in pairs]),
                                                         np.concatenate([x.items for x in pairs])),
                                            self.num_users, self.num_items)
            self._batches = BehaviorBatches(pairs, bought, self.num_users, self.num_items, batch, config.seed,
                                            sum(name.encode()))

    def build(self) -> nnx.Module:
        m = self.config.model
        return MultiBehaviorRecommender(self.num_users, self.num_items, m.dim, self.behaviors,
                                        behavior_vectors=not self.plain_mf, use_history=self.use_history,
                                        interaction_bonus=self.bonus, init_std=m.init_std,
                                        rngs=nnx.Rngs(self.config.seed))

    def steps_in_epoch(self, epoch: int) -> int:
        return self.num_users // self.train.batch_size

    def batches(self, epoch: int):
        return self._batches.epoch(epoch)

    def loss(self, model, batch, rng):
        pairs = tuple((batch[f"rows{b}"], batch[f"items{b}"], batch[f"bought{b}"]) for b in range(len(self.behaviors)))
        total = whole_data_loss(model, batch["users"], pairs, self.spec, rng)
        return total, {"loss_per_user": total / batch["users"].shape[0]}

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        p, ks = self.prepared, tuple(self.config.eval.ks)
        targets, exclude = (p.split.valid, p.valid_exclude) if split == "valid" else (p.data.test, p.test_exclude)
        return evaluate_model(model, targets, exclude, self.history, ks, self.config.eval.batch_size, self.auxiliary)


def _replace(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


class MultiBehaviorTask(Task):
    name = "multi_behavior"
    Config = MultiBehaviorConfig
    config: MultiBehaviorConfig

    def objective(self) -> tuple[str, bool]:
        return self.config.eval.monitor, True

    def __init__(self, config: MultiBehaviorConfig):
        super().__init__(config)
        self.prepared: _Prepared | None = None
        self.log_report: dict[str, Any] | None = None  # set when the data is a behaviour log
        self.log_ids: dict[str, np.ndarray] = {}  # a log's original user and item ids (dense order)

    def describe_data(self) -> dict[str, Any]:
        data = self._load()
        return {"source": data.source, **data.counts(), "duplicates_dropped": data.duplicates,
                **({"preparation": self.log_report} if self.log_report else {})}

    def _load(self) -> MultiBehaviorData:
        """The EHCF files, or a behaviour log split in time (its ids kept for ``recommend``)."""
        config = self.config.data
        if config.format == "ehcf":
            return load_taobao(config.path)
        from ecomjax.data.behavior_log import multi_behavior_from_sequences

        unknown = sorted(set(config.behavior_values) - set(Behavior.__args__))
        if unknown:
            raise ConfigError(f"data.behavior_values: unknown behaviour(s) {unknown}; allowed: {list(Behavior.__args__)}")
        sequences = read_interaction_sequences(config)
        data, split_report = multi_behavior_from_sequences(sequences, config.behavior_values)
        self.log_report = {**sequences.report, "behavior_split": split_report}
        self.log_ids = {"user_ids": np.asarray(sequences.user_ids), "item_ids": np.asarray(sequences.item_ids[1:])}
        return data

    def data_report(self) -> dict[str, Any] | None:
        return self.log_report

    def prepare(self) -> dict[str, Any]:
        config = self.config
        data = self._load()
        split = split_validation(data, config.data.valid_users, config.seed)
        self.prepared = _Prepared(data, split, {**data.train, TARGET_BEHAVIOR: split.fit_buy},
                                  padded_items(split.fit_buy, data.num_users, data.num_items),
                                  padded_items(data.train[TARGET_BEHAVIOR], data.num_users, data.num_items))
        return {"num_users": data.num_users, "num_items": data.num_items}

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        config = self.config
        main = list(config.behaviors)
        stages: list[Stage] = [BehaviorStage(self, spec, "model", main)]
        if config.compare_buy_only and main != [TARGET_BEHAVIOR]:
            stages.append(BehaviorStage(self, spec, "buy_only", [TARGET_BEHAVIOR]))
        if config.baselines.mf:
            stages.append(BehaviorStage(self, spec, "mf", [TARGET_BEHAVIOR], plain_mf=True))
        return stages

    def run(self, trainer, spec: dict[str, Any]) -> dict[str, Any]:
        stages = self.stages(spec)
        models = {}
        for stage in stages:
            models[stage.name] = trainer.fit(stage).model
            if stage.train.progress and trainer.primary:
                test = stage.evaluate(models[stage.name], "test")
                print(f"{stage.name}: test hr@10 {test.get('hr@10', float('nan')):.4f} "
                      f"ndcg@10 {test.get('ndcg@10', float('nan')):.4f}")
        return self.report(models)

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        config, p = self.config, self.prepared
        splits = ("valid", "test") if config.report_test else ("valid",)  # a trial scores no test purchase
        results = {}
        for stage in self.stages({"num_users": p.data.num_users, "num_items": p.data.num_items}):
            results[stage.name] = {split: stage.evaluate(models[stage.name], split) for split in splits}
        baselines: dict[str, Any] = self._rule_baselines(splits)
        if "mf" in results:
            baselines["mf"] = results["mf"]
        return {
            **({"test": results["model"]["test"]} if config.report_test else {}), "valid": results["model"]["valid"],
            "behaviors": list(config.behaviors), "baselines": baselines,
            "ablations": {"buy_only": results["buy_only"]} if "buy_only" in results else {},
            "protocol": {
                "target": "buy.test: one purchase per user, ranked over the whole catalogue",
                "num_items": p.data.num_items,
                "excluded_from_ranking": "the user's buy.train items (as EHCF's dev_step); carts are not",
                "ties": "counted against the target",
                "validation": f"one random training purchase of {config.data.valid_users:.0%} of the users, "
                              "held out of training; that user's other training purchases excluded",
                "test_users": len(p.data.test), "valid_users": len(p.split.valid),
            },
            "data": {**p.data.counts(), "duplicates_dropped": p.data.duplicates},
        }

    def _rule_baselines(self, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
        """Popularity and cart-then-popularity on the validation and test targets (``splits``);
        validation counts only the purchases the models train on, the test all of buy.train."""
        config, p = self.config, self.prepared
        data = p.data
        carts = data.train.get("cart")
        wanted = {"popularity": config.baselines.popularity,
                  "cart_then_popularity": config.baselines.cart_then_popularity and carts is not None}
        parts = (("valid", p.split.fit_buy, p.split.valid, p.valid_exclude),
                 ("test", data.train[TARGET_BEHAVIOR], data.test, p.test_exclude))
        out: dict[str, Any] = {}
        for rule in (name for name, enabled in wanted.items() if enabled):
            first_items = padded_items(carts, data.num_users, data.num_items) if rule != "popularity" else None
            out[rule] = {}
            for part, buy, targets, exclude in (x for x in parts if x[0] in splits):
                first = None if first_items is None else first_items[targets.users]
                out[rule][part] = popularity_metrics(buy, targets, exclude[targets.users], data.num_items,
                                                     tuple(config.eval.ks), config.eval.batch_size, first)
        return out

    def summary(self, metrics: dict[str, Any]) -> str:
        rows = [("model", metrics.get("test", {})), *metrics.get("ablations", {}).items(),
                *metrics.get("baselines", {}).items()]
        lines = [f"{'':22s} {'hr@10':>7s} {'ndcg@10':>8s}"]
        for name, m in rows:
            m = m.get("test", m)
            if "hr@10" in m:
                label = "+".join(metrics.get("behaviors", [])) if name == "model" else name
                lines.append(f"{label:22s} {m['hr@10']:7.4f} {m['ndcg@10']:8.4f}")
        return "\n".join(lines)

    def inference(self, run) -> Any:
        from ecomjax.serve.multi_behavior import UserRecommender

        return UserRecommender(run.model, run.vocab)

    def vocabulary(self) -> dict[str, np.ndarray]:
        """What ``recommend(user)`` reads, as CSR per behaviour: each user's training purchases
        (ranked out; with the carts, the history a model pools) and carts (the bonus)."""
        data = self.prepared.data
        out = {}
        for name, pairs in data.train.items():  # sorted by user: CSR as they are
            out[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(np.bincount(pairs.users, minlength=data.num_users))])
            out[f"{name}_items"] = pairs.items
        return {**out, **self.log_ids}


__all__ = ["MultiBehaviorConfig", "MultiBehaviorTask", "full_ranking_metrics"]
