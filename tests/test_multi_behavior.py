"""Taobao loader, full-ranking metrics, the whole-data loss and a small multi-behaviour run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import real_data
from flax import nnx

import ecomjax
from ecomjax.config import ConfigError, load_config
from ecomjax.data.taobao import (
    Interactions,
    MultiBehaviorData,
    load_taobao,
    padded_items,
    split_validation,
)
from ecomjax.eval.full_ranking import full_ranking_metrics
from ecomjax.models.multi_behavior import MultiBehaviorRecommender
from ecomjax.tasks.multi_behavior_loss import LossSpec, whole_data_loss

CONFIG = Path(__file__).parent.parent / "configs" / "ranker_taobao.yaml"


# --- loader ----------------------------------------------------------------------------------


def test_loader_reads_the_real_files():
    root = real_data("taobao/buy.train.txt").parent
    data = load_taobao(root)
    assert data.counts() == {"users": 48_749, "items": 39_493, "test_buy": 48_749,
                             "train_buy": 211_022, "train_cart": 193_747}
    assert data.duplicates == {"buy.train.txt": 0, "buy.test.txt": 0, "cart.csv": 0}
    assert np.array_equal(np.sort(data.test.users), np.arange(48_749))  # one test purchase each
    assert data.train["buy"].users.dtype == np.int32


def _write_taobao(root: Path, train: str = "0\t1\n0\t2\n1\t0\n", cart: str = "0\t3\tcart\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "buy.train.txt").write_text("uid\tsid\n" + train)
    (root / "buy.test.txt").write_text("uid\tsid\n0\t4\n1\t2\n")
    (root / "cart.csv").write_text("uid\tsid\t3\n" + cart)
    return root


def test_loader_dedupes_and_counts(tmp_path):
    data = load_taobao(_write_taobao(tmp_path, train="0\t1\n0\t1\n1\t0\n"))
    assert data.num_users == 2 and data.num_items == 5
    assert len(data.train["buy"]) == 2 and data.duplicates["buy.train.txt"] == 1


@pytest.mark.parametrize(("train", "cart", "where", "value"), [
    ("0\t1\n0\tabc\n", "0\t3\tcart\n", "buy.train.txt:3", "'abc'"),
    ("0\t1\n-1\t2\n", "0\t3\tcart\n", "buy.train.txt:3", "'-1'"),
    ("0\t1 2\n", "0\t3\tcart\n", "buy.train.txt:2", "'1 2'"),
    ("0\t1\n", "0\t3\tcart\n1\t2\tview\n", "cart.csv:3", "'view'"),
    ("0\t1\n", "0\t3\n", "cart.csv:2", "2"),
])
def test_malformed_row_names_file_line_and_value(tmp_path, train, cart, where, value):
    root = _write_taobao(tmp_path, train=train, cart=cart)
    with pytest.raises(ValueError, match=rf"{where}.*{value}"):
        load_taobao(root)


def test_missing_file_names_path_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"data\.path: directory .nowhere. not found as given or under ECOMJAX_DATA_DIR"):
        load_taobao("nowhere")
    _write_taobao(tmp_path / "taobao")
    assert load_taobao(None).num_users == 2  # default: $ECOMJAX_DATA_DIR/taobao


# --- metrics ---------------------------------------------------------------------------------


def _reference_metrics(scores, targets, exclude, ks):
    """Sort every row (ties: the target last) and read the target's position."""
    out = {f"{m}@{k}": 0.0 for m in ("hr", "ndcg") for k in ks}
    for row, target in enumerate(targets):
        s = scores[row].astype(np.float64).copy()
        s[[i for i in exclude[row] if i < len(s)]] = -np.inf
        order = sorted(range(len(s)), key=lambda j, row_s=s, t=target: (-row_s[j], j == t))
        position = order.index(target)
        for k in ks:
            if position < k:
                out[f"hr@{k}"] += 1 / len(targets)
                out[f"ndcg@{k}"] += 1 / math.log2(position + 2) / len(targets)
    return out


def test_full_ranking_metrics_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    users, items, dim, ks = 37, 50, 4, (1, 5, 10)
    vectors, matrix = rng.normal(size=(users, dim)), rng.normal(size=(items, dim))
    targets = rng.integers(0, items, users)
    exclude = np.full((users, 6), items)  # padded with the item count
    boost_items = np.full((users, 3), items)
    for row in range(users):
        others = rng.permutation(np.setdiff1d(np.arange(items), [targets[row]]))
        count = rng.integers(0, 7)
        exclude[row, :count] = others[:count]
        boost_items[row, :2] = others[6:8]
    boost_values = np.where(boost_items < items, 1.5, 0.0)
    scores = vectors @ matrix.T
    boosted = scores.copy()
    for row in range(users):
        for item, value in zip(boost_items[row], boost_values[row], strict=True):
            if item < items:
                boosted[row, item] += value
    got = full_ranking_metrics(vectors, matrix, targets, exclude, ks, batch_size=8)  # 5 chunks
    want = _reference_metrics(scores, targets, exclude, ks)
    assert got == pytest.approx(want, abs=1e-6)
    got = full_ranking_metrics(vectors, matrix, targets, exclude, ks, batch_size=8,
                               boost=(boost_items, boost_values))
    assert got == pytest.approx(_reference_metrics(boosted, targets, exclude, ks), abs=1e-6)


def test_training_items_are_excluded_per_user():
    # item 0 outscores everything for both users; only user 0 bought it in training
    matrix = np.array([[3.0], [2.0], [1.0], [0.0]])
    vectors = np.ones((2, 1))
    exclude = np.array([[0], [4]])  # 4 = padding
    got = full_ranking_metrics(vectors, matrix, np.array([1, 1]), exclude, ks=(1,))
    assert got["hr@1"] == 0.5  # user 0 finds item 1 on top, user 1 still sees item 0 first
    got = full_ranking_metrics(vectors, matrix, np.array([1, 1]), np.array([[0], [0]]), ks=(1,))
    assert got["hr@1"] == 1.0


def test_padded_items_and_validation_split():
    pairs = Interactions(np.array([0, 0, 0, 2, 2, 2, 2], np.int32), np.array([5, 1, 3, 0, 2, 4, 6], np.int32))
    padded = padded_items(pairs, num_users=3, pad=9)
    assert padded.tolist() == [[1, 3, 5, 9], [9, 9, 9, 9], [0, 2, 4, 6]]
    data = MultiBehaviorData(3, 9, {"buy": pairs}, Interactions(np.array([0], np.int32), np.array([7], np.int32)))
    split = split_validation(data, fraction=0.99, seed=0)
    assert sorted(split.valid.users.tolist()) == [0, 2]  # user 1 has no purchases to hold out
    assert len(split.fit_buy) + len(split.valid) == len(pairs)
    held = set(zip(split.valid.users.tolist(), split.valid.items.tolist(), strict=True))
    kept = set(zip(split.fit_buy.users.tolist(), split.fit_buy.items.tolist(), strict=True))
    assert not held & kept


# --- loss ------------------------------------------------------------------------------------


def test_whole_data_loss_equals_the_dense_weighted_regression():
    """The Gram-trick loss (+ the cart bonus) equals the sum over every (user, item) pair."""
    users, items = 5, 7
    model = MultiBehaviorRecommender(users, items, 3, ["cart", "buy"], use_history=True,
                                     interaction_bonus=True, init_std=0.5, rngs=nnx.Rngs(1))
    model.interaction_bonus.set_value(jnp.array([0.7]))
    rng = np.random.default_rng(1)
    y = {b: (rng.random((users, items)) < 0.3).astype(np.float64) for b in ("cart", "buy")}
    weights, c0 = (0.4, 0.6), (0.1, 0.05)
    pairs = []
    for b in ("cart", "buy"):
        rows, cols = np.nonzero(y[b])
        rows, cols = np.pad(rows, (0, 3)), np.pad(cols, (0, 3), constant_values=items)  # + padding
        bought = np.array([c < items and y["buy"][r, c] == 1 for r, c in zip(rows, cols, strict=True)])
        pairs.append((jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), jnp.asarray(bought, jnp.int8)))
    spec = LossSpec(("cart", "buy"), weights, c0, dropout=0.0)
    got = float(whole_data_loss(model, jnp.arange(users), tuple(pairs), spec, key=None))

    history = np.concatenate([np.stack(np.nonzero(y[b]), 1) for b in ("cart", "buy")])
    hist = [history[history[:, 0] == u, 1] for u in range(users)]
    width = max(len(h) for h in hist)
    hist = jnp.asarray([np.pad(h, (0, width - len(h)), constant_values=items) for h in hist])
    want = 0.0
    for b, name in enumerate(("cart", "buy")):
        aux = {"cart": jnp.asarray(padded_items(Interactions(*[np.asarray(a, np.int32) for a in np.nonzero(y["cart"])]),
                                                users, items))}
        scores = np.asarray(model(jnp.arange(users), name, history=hist, auxiliary=aux), np.float64)
        c = np.where(y[name] == 1, 1.0, c0[b])
        want += weights[b] * (np.sum(c * (y[name] - scores) ** 2) - y[name].sum())
    assert got == pytest.approx(want, rel=1e-4)


# --- a small run -----------------------------------------------------------------------------


def _synthetic_shop(seed: int = 0, users: int = 200, clusters: int = 20, per_cluster: int = 20,
                    buys: int = 3, carts: int = 10) -> MultiBehaviorData:
    """Every user likes one cluster of items: few purchases, many carts, all from that cluster;
    the test purchase is another item of the cluster. With 10 users a cluster, 3 purchases each
    barely reveal the clusters; the carts do (measured over seeds: hr@10 about 0.6 with carts,
    0.3 without)."""
    rng = np.random.default_rng(seed)
    train, cart, test = [], [], []
    for user in range(users):
        cluster = rng.integers(clusters)
        chosen = cluster * per_cluster + rng.permutation(per_cluster)
        train += [(user, i) for i in chosen[:buys]]
        test.append((user, chosen[buys]))
        cart += [(user, i) for i in rng.choice(chosen[buys + 1:], carts, replace=False)]

    def pairs(rows):
        rows = np.array(sorted(rows), dtype=np.int32)
        return Interactions(rows[:, 0].copy(), rows[:, 1].copy())

    return MultiBehaviorData(users, clusters * per_cluster, {"buy": pairs(train), "cart": pairs(cart)},
                             pairs(test))


def _write_taobao_files(root: Path, shop: MultiBehaviorData) -> Path:
    """The shop in the EHCF file format, so a run reads it as it reads Taobao."""
    root.mkdir(parents=True, exist_ok=True)
    rows = {"buy.train.txt": (shop.train["buy"], None), "buy.test.txt": (shop.test, None),
            "cart.csv": (shop.train["cart"], "cart")}
    for name, (pairs, behaviour) in rows.items():
        lines = ["uid\tsid" + ("\t3" if behaviour else "")]
        lines += [f"{u}\t{i}" + (f"\t{behaviour}" if behaviour else "")
                  for u, i in zip(pairs.users, pairs.items, strict=True)]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


SMALL = {"model.dim": 16, "train.epochs": 40, "train.batch_size": 64, "train.eval_every_epochs": 5,
         "train.early_stopping_patience": 8, "train.progress": False, "eval.ks": [10], "eval.monitor": "ndcg@10",
         "model.interaction_bonus": False, "baselines.mf": False}


def _train_small(tmp_path: Path, shop: MultiBehaviorData | None = None, **overrides):
    files = _write_taobao_files(tmp_path / "taobao", shop or _synthetic_shop())
    return ecomjax.train(CONFIG, overrides={**SMALL, "workdir": str(tmp_path / "run"), "data.path": str(files),
                                            **overrides})


def test_carts_improve_a_small_synthetic_shop(tmp_path):
    result = _train_small(tmp_path)
    metrics = result.metrics
    multi = metrics["test"]["hr@10"]
    buy_only = metrics["ablations"]["buy_only"]["test"]["hr@10"]
    popularity = metrics["baselines"]["popularity"]["test"]["hr@10"]
    assert multi > buy_only + 0.15 and multi > popularity + 0.3, metrics

    workdir = result.workdir
    assert {"config.yaml", "history.jsonl", "metrics.json", "model.json", "vocab.npz"} <= {
        p.name for p in workdir.iterdir()}
    assert {p.name for p in (workdir / "checkpoints").iterdir()} == {"model", "buy_only"}
    saved = json.loads((workdir / "metrics.json").read_text())
    assert set(saved) >= {"test", "valid", "train_seconds", "protocol", "baselines", "ablations", "stages"}
    assert "cart_then_popularity" in saved["baselines"]
    losses = [r["loss"] for r in map(json.loads, (workdir / "history.jsonl").read_text().splitlines())
              if r["stage"] == "model" and "loss" in r]
    assert losses[-1] < losses[0]
    loaded = ecomjax.load(workdir)  # the kept parameters, without the files
    np.testing.assert_array_equal(np.asarray(loaded.model.user_embedding[...]),
                                  np.asarray(result.model.user_embedding[...]))
    again = ecomjax.evaluate(workdir)
    assert again["test"] == pytest.approx(metrics["test"], abs=1e-7)
    # a known user's recommendations: training purchases ranked out, best first
    top = loaded.recommend(3, k=10)
    offsets = loaded.vocab["buy_offsets"]
    bought = set(loaded.vocab["buy_items"][offsets[3]:offsets[4]].tolist())
    assert len(top.item_ids) == 10 and bought and not set(top.item_ids.tolist()) & bought
    assert np.all(np.diff(top.scores) <= 0)
    with pytest.raises(KeyError, match="user 999 unknown"):
        loaded.recommend(999)


def test_nan_loss_names_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"model: loss is nan at step \d+ \(epoch \d+\)"):
        _train_small(tmp_path, **{"train.optimizer": "adamw", "train.learning_rate": 1e30,
                                  "compare_buy_only": False, "train.epochs": 3})


# --- config ----------------------------------------------------------------------------------


def test_config_file_loads_and_rejects_unknown_keys():
    config = load_config(CONFIG, ["behaviors=[buy]", "model.dim=8"])
    assert config.behaviors == ["buy"] and config.model.dim == 8
    assert config.behavior_weights["buy"] > 0 and config.train.optimizer == "adagrad"
    with pytest.raises(ConfigError, match=r"model\.dimm"):
        load_config(CONFIG, ["model.dimm=3"])
    with pytest.raises(ConfigError, match="epochz"):
        load_config({"task": "multi_behavior", "train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="behaviors"):
        load_config(CONFIG, ["behaviors=[cart]"])
    with pytest.raises(ConfigError, match=r"negative_weights\.view"):
        load_config(CONFIG, ["negative_weights.view=0.1"])


def test_cli_trains_a_multi_behavior_config(tmp_path, capsys):
    from ecomjax.cli import main

    root = _write_taobao_files(tmp_path / "taobao", _synthetic_shop(users=60, clusters=6))
    overrides = [f"workdir={tmp_path / 'run'}", f"data.path={root}", "model.dim=8", "train.epochs=4",
                 "train.eval_every_epochs=2", "train.batch_size=32", "train.progress=false", "baselines.mf=false"]
    assert main(["train", str(CONFIG), *overrides]) == 0
    out = capsys.readouterr().out
    assert "buy_only" in out and "popularity" in out and "hr@10" in out
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert main(["data", "describe", str(CONFIG), f"data.path={root}"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 60


def test_a_timestamped_behaviour_log_is_split_in_time_and_trains_the_same_model(tmp_path):
    """The synthetic shop written as one log (views too, which the model does not use): test =
    each user's last purchase of a new item, training = everything before it in time."""
    import ecomjax

    shop = _synthetic_shop(users=60, clusters=6)
    rng = np.random.default_rng(1)
    rows = []
    for user in range(shop.num_users):
        events = [("buy", i) for i in shop.train["buy"].items[shop.train["buy"].users == user]]
        events += [("cart", i) for i in shop.train["cart"].items[shop.train["cart"].users == user]]
        events += [("pv", int(rng.integers(shop.num_items)))]
        order = rng.permutation(len(events))
        t = 0
        for k in order:
            t += int(rng.integers(1, 100))
            rows.append((f"u{user}", f"p{events[k][1]}", t, events[k][0]))
        test_item = int(shop.test.items[shop.test.users == user][0])
        rows.append((f"u{user}", f"p{test_item}", t + 1, "buy"))
        rows.append((f"u{user}", f"p{test_item}", t + 2, "cart"))  # after the test purchase: never trained on
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts,type\n" + "".join(f"{u},{i},{t},{b}\n" for u, i, t, b in rows))
    overrides = {"data.path": str(log), "data.format": "delimited", "data.columns.user": "user",
                 "data.columns.item": "item", "data.columns.time": "ts", "data.columns.behavior": "type",
                 "model.dim": 8, "train.epochs": 4, "train.eval_every_epochs": 2, "train.batch_size": 32,
                 "train.progress": False, "baselines.mf": False, "compare_buy_only": False}
    run = ecomjax.train(str(CONFIG), workdir=str(tmp_path / "run"), **overrides)
    data = run.task.prepared.data
    names = run.vocab["item_ids"]
    assert len(data.test) == 60
    for user in range(60):  # the test purchase is the file's, the training carts exclude the late one
        expected = f"p{int(shop.test.items[shop.test.users == user][0])}"
        assert names[data.test.items[data.test.users == user][0]] == expected
    assert len(data.train["cart"]) == len(shop.train["cart"])
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["behavior_split"]["rows_of_unmodelled_behaviours"] == {"pv": 60}
    assert report["behavior_split"]["after_test_purchase_not_trained"] == 60
    recs = run.recommend("u3", k=5)
    assert len(recs.item_ids) == 5 and all(str(i).startswith("p") for i in recs.item_ids)
