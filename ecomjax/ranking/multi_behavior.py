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
of every trained behaviour (flat, not padded per user) and the whole item table; an epoch is one
``lax.scan``. On two CPU cores an epoch over the 48,749 users takes 2-5 s, where a full softmax
over 39,493 items for each of the 400k pairs would take minutes.

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

Modules: the model is ``ecomjax.models.multi_behavior``, data layout / evaluation / rule
baselines ``ecomjax.ranking.multi_behavior_eval``; this one holds the loss and the training.

Measured on buy.test (``configs/ranker_taobao.yaml``, d 128, 2 shared CPU cores, whole run 6 min;
standard error of HR@10 about 0.002):

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

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ecomjax.config import save_config
from ecomjax.data.taobao import Interactions, MultiBehaviorData, load_taobao
from ecomjax.models.multi_behavior import MultiBehaviorRecommender
from ecomjax.ranking.multi_behavior_config import (
    TARGET_BEHAVIOR,
    MultiBehaviorConfig,
    load_multi_behavior_config,
)
from ecomjax.ranking.multi_behavior_eval import (
    ValidationSplit,
    evaluate_model,
    padded_items,
    popularity_metrics,
    split_validation,
)
from ecomjax.search.store import save_params
from ecomjax.train.loop import NonFiniteLossError

# --- training --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: MultiBehaviorRecommender
    workdir: Path


@dataclass
class LossSpec:
    """What the whole-data loss of one model covers."""

    behaviors: tuple[str, ...]
    loss_weights: tuple[float, ...]
    negative_weights: tuple[float, ...]
    dropout: float


def whole_data_loss(model: MultiBehaviorRecommender, users: jax.Array,
                    pairs: tuple[tuple[jax.Array, jax.Array, jax.Array], ...], spec: LossSpec,
                    key: jax.Array) -> jax.Array:
    """EHCF's non-sampling loss of a batch of users over all items (see the module doc).

    ``pairs[b]`` is ``(rows, items, bought)``: every observed pair of behaviour ``b`` of these users,
    flat, ``rows`` indexing ``users``, ``items`` padded with ``num_items``, ``bought`` 1 where the
    pair is also a training purchase (used by the interaction bonus). Up to a constant the result
    is ``sum_b w_b sum_{u in users, all items i} c_bui (y_bui - score_b(u, i))^2``.
    """
    history = None
    if model.use_history:  # the user's observed items of every trained behaviour
        history = (jnp.concatenate([r for r, _, _ in pairs]), jnp.concatenate([i for _, i, _ in pairs]))
    p = model.user_vectors(users, history)
    if spec.dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - spec.dropout, p.shape)
        p = jnp.where(keep, p / (1.0 - spec.dropout), 0.0)
    q = model.item_embedding[...]
    h = model.behavior_matrix()
    user_gram, item_gram = p.T @ p, q.T @ q
    total = jnp.zeros((), jnp.float32)
    for b, (weight, c0) in enumerate(zip(spec.loss_weights, spec.negative_weights, strict=True)):
        rows, items, _ = pairs[b]
        mask = (items < model.num_items).astype(p.dtype)
        r = jnp.einsum("nd,nd,d->n", p[rows], q[jnp.minimum(items, model.num_items - 1)], h[b])
        observed = jnp.sum(mask * ((1.0 - c0) * r * r - 2.0 * r))
        unobserved = c0 * jnp.sum(user_gram * item_gram * jnp.outer(h[b], h[b]))
        total = total + weight * (observed + unobserved)
    if model.interaction_bonus is not None:
        # purchase score + x on the items of an auxiliary behaviour changes their squared errors by
        # c (x^2 - 2 x (y - r)), with y = 1, c = 1 if bought, else y = 0, c = c0 (exact when an
        # item is in at most one auxiliary behaviour, as with Taobao's single one)
        t = model.behaviors.index(TARGET_BEHAVIOR)
        c0 = spec.negative_weights[t]
        for a, name in enumerate(model.auxiliary):
            rows, items, bought = pairs[model.behaviors.index(name)]
            mask = (items < model.num_items).astype(p.dtype)
            r = jnp.einsum("nd,nd,d->n", p[rows], q[jnp.minimum(items, model.num_items - 1)], h[t])
            x = model.bonus()[a]
            y = bought.astype(p.dtype)
            c = y + (1.0 - y) * c0
            total = total + spec.loss_weights[t] * jnp.sum(mask * c * (x * x - 2.0 * x * (y - r)))
    return total


def _make_optimizer(config: MultiBehaviorConfig) -> optax.GradientTransformation:
    train = config.train
    if train.optimizer == "adamw":
        return optax.adamw(train.learning_rate, weight_decay=train.weight_decay)
    parts = [optax.add_decayed_weights(train.weight_decay)] if train.weight_decay else []
    return optax.chain(*parts, optax.adagrad(train.learning_rate, initial_accumulator_value=1e-8))


def _make_epoch(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, spec: LossSpec):
    """One jitted epoch: ``lax.scan`` over the steps (no per-step dispatch from Python)."""

    def step(carry, batch):
        params, opt_state, key = carry
        users, pairs = batch
        key, dropout_key = jax.random.split(key)

        def loss_fn(params):
            return whole_data_loss(nnx.merge(graphdef, params), users, pairs, spec, dropout_key)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, users, pairs, key):
        (params, opt_state, _), losses = jax.lax.scan(step, (params, opt_state, key), (users, pairs))
        return params, opt_state, losses

    return epoch


class _EpochBatches:
    """Per epoch: a random order of the users cut into ``[steps, batch]``, and every behaviour's
    pairs grouped by step into ``[steps, capacity]`` (flat, so a user with 60 purchases costs 60
    gathers, not the width of the largest row for everyone)."""

    def __init__(self, pairs: list[Interactions], bought: list[np.ndarray], num_users: int,
                 num_items: int, batch: int, seed: int):
        self.pairs, self.bought, self.num_users, self.num_items = pairs, bought, num_users, num_items
        self.batch, self.steps = batch, num_users // batch
        self.rng = np.random.default_rng(seed)
        # room for 15% more pairs than an average step; grown (one recompilation) if an epoch needs it
        self.capacity = [_round_up(int(1.15 * len(p) * batch / num_users) + 1, 256) for p in pairs]

    def next(self) -> tuple[np.ndarray, tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]]:
        order = self.rng.permutation(self.num_users)
        position = np.empty(self.num_users, dtype=np.int64)
        position[order] = np.arange(self.num_users)
        users = order[: self.steps * self.batch].reshape(self.steps, self.batch).astype(np.int32)
        grouped = []
        for b, pairs in enumerate(self.pairs):
            pos = position[pairs.users]
            keep = pos < self.steps * self.batch  # users left over wait for the next epoch
            step, row, items = pos[keep] // self.batch, (pos[keep] % self.batch), pairs.items[keep]
            sort = np.argsort(step, kind="stable")
            step, row, items, bought = step[sort], row[sort], items[sort], self.bought[b][keep][sort]
            counts = np.bincount(step, minlength=self.steps)
            if counts.max() > self.capacity[b]:
                self.capacity[b] = _round_up(int(counts.max()), 256)
            slot = np.arange(len(step)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[step]
            rows = np.zeros((self.steps, self.capacity[b]), np.int32)
            padded = np.full((self.steps, self.capacity[b]), self.num_items, np.int32)
            flags = np.zeros((self.steps, self.capacity[b]), np.int8)
            rows[step, slot], padded[step, slot], flags[step, slot] = row, items, bought
            grouped.append((rows, padded, flags))
        return users, tuple(grouped)


def _pair_keys(pairs: Interactions, num_items: int) -> np.ndarray:
    return pairs.users.astype(np.int64) * num_items + pairs.items


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class FitResult:
    model: MultiBehaviorRecommender
    valid: dict[str, float]  # metrics of the kept epoch
    best_epoch: int
    epochs_run: int
    train_seconds: float
    history: np.ndarray | None = None  # padded training items per user, for use_history models
    auxiliary: dict[str, np.ndarray] | None = None  # padded auxiliary items per user (bonus)


def fit(name: str, model: MultiBehaviorRecommender, train: dict[str, Interactions], valid: Interactions,
        valid_exclude: np.ndarray, config: MultiBehaviorConfig, history_log: Any | None = None,
        ) -> FitResult:
    """Train ``model`` on the behaviours it was built for, stop early on validation, keep the best.

    ``train`` holds the pairs of every behaviour of ``model.behaviors`` (buy without the validation
    targets); ``valid_exclude`` is indexed by user id. Each epoch covers the users in a random order
    in full batches (the remainder of the permutation waits for the next epoch, as in EHCF).
    """
    start = time.perf_counter()
    num_users, num_items = model.user_embedding.shape[0], model.num_items
    behavior_pairs = [train[b] for b in model.behaviors]
    bought_keys = _pair_keys(train[TARGET_BEHAVIOR], num_items)
    bought = [np.isin(_pair_keys(p, num_items), bought_keys).astype(np.int8) for p in behavior_pairs]
    auxiliary = {b: padded_items(train[b], num_users, num_items) for b in model.auxiliary}
    history = None
    if model.use_history:  # every trained interaction, as the loss sees it
        history = padded_items(Interactions(np.concatenate([p.users for p in behavior_pairs]),
                                            np.concatenate([p.items for p in behavior_pairs])),
                               num_users, num_items)
    spec = LossSpec(model.behaviors, tuple(config.behavior_weights.get(b, 0.0) for b in model.behaviors),
                    tuple(config.negative_weights.get(b, 0.0) for b in model.behaviors), config.model.dropout)
    optimizer = _make_optimizer(config)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = optimizer.init(params)
    epoch_fn = _make_epoch(graphdef, optimizer, spec)
    batches = _EpochBatches(behavior_pairs, bought, num_users, num_items,
                            min(config.train.batch_size, num_users), config.seed)
    key = jax.random.key(config.seed)
    ks, monitor = tuple(config.eval.ks), config.eval.monitor
    best, best_params, best_epoch, bad, epoch = None, None, 0, 0, 0
    bar = tqdm(range(1, config.train.epochs + 1), desc=name, disable=not config.train.progress, leave=False)
    for epoch in bar:
        key, epoch_key = jax.random.split(key)
        users, pairs = batches.next()
        params, opt_state, losses = epoch_fn(params, opt_state, users, pairs, epoch_key)
        loss = float(jnp.sum(losses)) / users.size
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"{name}: epoch {epoch}: training loss is {loss} (not finite); "
                                     "lower train.learning_rate or the negative weights")
        record: dict[str, Any] = {"model": name, "epoch": epoch, "loss": loss,
                                  "seconds": round(time.perf_counter() - start, 2)}
        if epoch % config.train.eval_every == 0 or epoch == config.train.epochs:
            nnx.update(model, params)
            metrics = evaluate_model(model, valid, valid_exclude, history, ks, config.eval.batch_size,
                                     auxiliary)
            record["valid"] = metrics
            if best is None or metrics[monitor] > best[monitor]:
                best, best_epoch, bad = metrics, epoch, 0
                best_params = jax.tree.map(np.array, params)
            else:
                bad += 1
            bar.set_postfix(loss=f"{loss:.4f}", **{monitor: f"{metrics[monitor]:.4f}"})
        if history_log is not None:
            history_log.write(json.dumps(record) + "\n")
            history_log.flush()
        if bad >= config.train.patience:
            break
    bar.close()
    nnx.update(model, jax.tree.map(jnp.asarray, best_params))
    return FitResult(model, best, best_epoch, epoch, time.perf_counter() - start, history, auxiliary)


# --- a whole run -----------------------------------------------------------------------------


def _build_model(data: MultiBehaviorData, config: MultiBehaviorConfig, behaviors: list[str], *,
                 plain_mf: bool = False) -> MultiBehaviorRecommender:
    """The configured model on ``behaviors``; ``plain_mf``: dot product, no history, no bonus."""
    return MultiBehaviorRecommender(
        data.num_users, data.num_items, config.model.dim, behaviors, behavior_vectors=not plain_mf,
        use_history=config.model.use_history and not plain_mf,
        interaction_bonus=config.model.interaction_bonus and not plain_mf,
        init_std=config.model.init_std, rngs=nnx.Rngs(config.seed))


def rule_baselines(config: MultiBehaviorConfig, data: MultiBehaviorData, split: ValidationSplit,
                   valid_exclude: np.ndarray, test_exclude: np.ndarray) -> dict[str, Any]:
    """Popularity and cart-then-popularity metrics on the validation and test targets.

    Validation counts only the purchases the models train on; the test counts all of buy.train.
    """
    carts = data.train.get("cart")
    wanted = {"popularity": config.baselines.popularity,
              "cart_then_popularity": config.baselines.cart_then_popularity and carts is not None}
    parts = (("valid", split.fit_buy, split.valid, valid_exclude),
             ("test", data.train[TARGET_BEHAVIOR], data.test, test_exclude))
    out: dict[str, Any] = {}
    for rule in (name for name, enabled in wanted.items() if enabled):
        started = time.perf_counter()
        first_items = padded_items(carts, data.num_users, data.num_items) if rule != "popularity" else None
        out[rule] = {}
        for part, buy, targets, exclude in parts:
            first = None if first_items is None else first_items[targets.users]
            out[rule][part] = popularity_metrics(buy, targets, exclude[targets.users], data.num_items,
                                                 tuple(config.eval.ks), config.eval.batch_size, first)
        out[rule]["train_seconds"] = round(time.perf_counter() - started, 1)
    return out


def train_multi_behavior(config: MultiBehaviorConfig | str | Path | dict,
                         data: MultiBehaviorData | None = None) -> TrainResult:
    """Train the configured model, its baselines and the buy-only ablation; write ``workdir``.

    ``workdir`` receives ``config.yaml``, ``history.jsonl`` (one line per model and epoch),
    ``metrics.json`` and ``params.npz`` (the main model's parameters, ``ecomjax.search.store``).
    ``data`` replaces the Taobao files (tests pass a synthetic ``MultiBehaviorData``).
    """
    started = time.perf_counter()
    if not isinstance(config, MultiBehaviorConfig):
        config = load_multi_behavior_config(config)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / "config.yaml")
    if data is None:
        data = load_taobao(config.data.path)
    split = split_validation(data, config.data.valid_users, config.seed)
    fit_train = {**data.train, TARGET_BEHAVIOR: split.fit_buy}
    valid_exclude = padded_items(split.fit_buy, data.num_users, data.num_items)
    test_exclude = padded_items(data.train[TARGET_BEHAVIOR], data.num_users, data.num_items)
    main_behaviors = list(config.behaviors)
    plans = [("multi_behavior" if main_behaviors != [TARGET_BEHAVIOR] else "buy_only", main_behaviors, False)]
    if config.compare_buy_only and main_behaviors != [TARGET_BEHAVIOR]:
        plans.append(("buy_only", [TARGET_BEHAVIOR], False))
    if config.baselines.mf:
        plans.append(("mf", [TARGET_BEHAVIOR], True))

    runs: dict[str, dict[str, Any]] = {}
    main_model = None
    with (workdir / "history.jsonl").open("w") as log:
        for name, behaviors, plain_mf in plans:
            model = _build_model(data, config, behaviors, plain_mf=plain_mf)
            result = fit(name, model, fit_train, split.valid, valid_exclude, config, log)
            test = evaluate_model(result.model, data.test, test_exclude, result.history,
                                  tuple(config.eval.ks), config.eval.batch_size, result.auxiliary)
            runs[name] = {"test": test, "valid": result.valid, "best_epoch": result.best_epoch,
                          "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 1)}
            if main_model is None:
                main_model, main_name = result.model, name
            if config.train.progress:
                tqdm.write(f"{name}: best epoch {result.best_epoch}, test hr@10 {test['hr@10']:.4f} "
                           f"ndcg@10 {test['ndcg@10']:.4f}, {result.train_seconds:.0f}s")
    baselines = rule_baselines(config, data, split, valid_exclude, test_exclude)
    if "mf" in runs:
        baselines["mf"] = runs["mf"]
    main = runs[main_name]
    metrics = {
        "test": main["test"],
        "valid": main["valid"],
        "train_seconds": main["train_seconds"],
        "best_epoch": main["best_epoch"],
        "behaviors": main_behaviors,
        "baselines": baselines,
        "ablations": {"buy_only": runs["buy_only"]} if main_name != "buy_only" and "buy_only" in runs else {},
        "protocol": {
            "target": "buy.test: one purchase per user, ranked over the whole catalogue",
            "num_items": data.num_items,
            "excluded_from_ranking": "the user's buy.train items (as EHCF's dev_step); carts are not",
            "ties": "counted against the target",
            "validation": f"one random training purchase of {config.data.valid_users:.0%} of the users, "
                          "held out of training; that user's other training purchases excluded",
            "test_users": len(data.test),
            "valid_users": len(split.valid),
        },
        "data": {**data.counts(), "duplicates_dropped": data.duplicates},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_params(main_model, workdir / "params.npz")
    return TrainResult(metrics=metrics, model=main_model, workdir=workdir)
