"""Satisfaction ranker: impressions and their funnel, losses, model variants, file readers, runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import real_data
from flax import nnx

import ecomjax
from ecomjax.config import ConfigError, load_config
from ecomjax.data.ctr_files import read_ctr_files
from ecomjax.data.impressions import ImpressionConfig, generate_impressions
from ecomjax.data.schema import split_by_group
from ecomjax.data.synthetic import SyntheticConfig
from ecomjax.errors import DataFormatError
from ecomjax.models.ranker import MultiTaskRanker
from ecomjax.tasks.ranker import host_columns, load_impressions, predict
from ecomjax.tasks.ranker_losses import esmm_purchase_loss, log_ctcvr, ranker_losses

SMALL_SHOP = SyntheticConfig(num_users=300, num_items=200, num_categories=8)


@pytest.fixture(scope="module")
def impressions():
    return generate_impressions(SMALL_SHOP, ImpressionConfig(num_requests=3000, list_size=8, seed=1))


def test_impressions_follow_the_funnel(impressions):
    d = impressions
    assert len(d) == 24000 and d.schema.num_fields == 12
    assert not ((d.purchase > 0) & (d.click == 0)).any()  # no purchase without a click
    assert not ((d.dwell > 0) & (d.click == 0)).any() and (d.dwell[d.click > 0] > 0).all()
    np.testing.assert_array_equal(d.purchase, d.click * d.truth["would_buy"])
    positions = d.categorical[:, d.schema.index("position")].reshape(-1, 8)
    assert (np.sort(positions, axis=1) == np.arange(1, 9)).all()
    items = d.categorical[:, d.schema.index("item")].reshape(-1, 8)
    assert all(len(set(row)) == 8 for row in items)  # no item twice in a list
    # position bias: the same impressions shown first are more likely clicked
    assert (d.truth["p_click_top"] >= d.truth["p_click"] - 1e-12).all()
    top = positions.reshape(-1) == 1
    assert d.click[top].mean() > d.click[positions.reshape(-1) == 8].mean()
    again = generate_impressions(SMALL_SHOP, ImpressionConfig(num_requests=3000, list_size=8, seed=1))
    np.testing.assert_array_equal(again.click, d.click)


def test_validate_refuses_a_purchase_without_click(impressions):
    d = impressions.take(np.arange(100))
    d.purchase = d.purchase.copy()
    row = int(np.flatnonzero(d.click == 0)[0])
    d.purchase[row] = 1
    with pytest.raises(ValueError, match=f"purchase without a click \\(first: row {row}\\)"):
        d.validate()


def test_drop_fields_removes_a_feature_and_names_unknown_ones(impressions):
    from ecomjax.data.schema import drop_fields

    dropped = drop_fields(impressions, ["user", "log_price"])
    assert [f.name for f in dropped.schema.categorical][:2] == ["segment", "device"]
    assert dropped.schema.numeric == ("log_popularity",) and dropped.categorical.shape[1] == 8
    np.testing.assert_array_equal(dropped.users, impressions.users)  # GAUC still groups by user
    with pytest.raises(ValueError, match="no field"):
        drop_fields(impressions, ["usr"])
    with pytest.raises(ValueError, match="holds the table of sequence"):
        drop_fields(impressions, ["category"])


def test_split_keeps_requests_whole(impressions):
    splits = split_by_group(impressions, 0.1, 0.2, seed=0)
    sides = [set(impressions.groups[rows]) for rows in splits.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(r) for r in splits.values()) == len(impressions)


def test_esmm_loss_matches_float64_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64) * 3, rng.normal(size=64) * 3
    y = (rng.random(64) < 0.2).astype(np.float32)
    p = 1 / (1 + np.exp(-a)) / (1 + np.exp(-b))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    got = esmm_purchase_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    log_p, log_not_p = log_ctcvr(jnp.array([40.0, -40.0]), jnp.array([40.0, -40.0]))
    assert np.isfinite(np.asarray(log_p)).all() and np.isfinite(np.asarray(log_not_p)).all()


def test_dwell_and_clicked_only_losses_ignore_unclicked_rows():
    click = jnp.array([1.0, 0.0, 1.0, 0.0])
    batch = {"click": click, "purchase": jnp.array([1.0, 0.0, 0.0, 0.0]), "log_dwell": jnp.array([3.0, 0.0, 4.0, 0.0])}
    outputs = {"click": jnp.zeros(4), "purchase": jnp.zeros(4), "dwell": jnp.array([3.5, 9.0, 4.0, -9.0])}
    losses = ranker_losses(outputs, batch, "clicked_only")
    assert float(losses["dwell"]) == pytest.approx((0.5 ** 2 + 0.0) / 2)  # mean over the 2 clicked rows

    def cvr_loss(logits):
        return ranker_losses({**outputs, "purchase": logits}, batch, "clicked_only")["purchase"]

    grad = jax.grad(cvr_loss)(jnp.zeros(4))
    assert float(grad[1]) == 0.0 and float(grad[3]) == 0.0 and float(grad[0]) != 0.0
    esmm_grad = jax.grad(lambda z: ranker_losses({**outputs, "purchase": z}, batch, "esmm")["purchase"])(jnp.zeros(4))
    assert float(esmm_grad[1]) != 0.0  # ESMM learns pCVR from every impression


@pytest.mark.parametrize("interaction", ["autoint", "dcnv2"])
@pytest.mark.parametrize("sharing", ["shared_bottom", "mmoe"])
def test_ranker_variants_give_one_output_per_task(impressions, interaction, sharing):
    model = MultiTaskRanker(impressions.schema, ("click", "purchase", "dwell"), interaction=interaction,
                            sharing=sharing, embed_dim=8, attention_dim=8, deep=(16,), expert_hidden=(16,),
                            tower_hidden=(8,), cross_rank=4 if sharing == "mmoe" else 0,
                            initial_bias={"dwell": 3.0}, rngs=nnx.Rngs(0))
    d = host_columns(impressions)
    out = model(d["categorical"][:5], d["numeric"][:5], d["sequences"][:5])
    assert set(out) == {"click", "purchase", "dwell"} and all(v.shape == (5,) for v in out.values())
    # the history field shares the category table: one table, no separate sequence table
    assert len(model.embedding.sequence_tables) == 0


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.interation'"):
        load_config({"task": "ranker", "model": {"interation": "dcnv2"}})
    with pytest.raises(ConfigError, match=r"model\.sharing"):
        load_config({"task": "ranker"}, ["model.sharing=moe"])
    with pytest.raises(ConfigError, match=r"needs data\.path"):
        load_config({"task": "ranker"}, ["data.source=criteo"])
    config = load_config("configs/ranker_synthetic.yaml")  # the task's own train defaults under the file's keys
    assert config.train.warmup_fraction == 0.05 and config.train.early_stopping_patience == 3


TINY = {"data.synthetic.num_users": 300, "data.synthetic.num_items": 200, "data.synthetic.num_categories": 8,
        "data.impressions.num_requests": 2500, "model.embed_dim": 8, "model.attention_dim": 16,
        "model.attention_layers": 1, "model.expert_hidden": [32], "model.tower_hidden": [16], "train.epochs": 3,
        "train.batch_size": 512, "baselines.gbdt_rounds": 100, "train.progress": False}


def _train(workdir, **extra):
    return ecomjax.train("configs/ranker_synthetic.yaml", overrides={**TINY, "workdir": str(workdir), **extra})


def _features(data, rows):
    return {"categorical": data.categorical[rows], "numeric": data.numeric[rows], "sequences": data.sequences[rows]}


def test_ranker_trains_through_the_loop_reloads_and_scores(tmp_path):
    run = _train(tmp_path / "run")
    m = json.loads((run.workdir / "metrics.json").read_text())
    assert m["tasks"] == ["click", "purchase", "dwell"]
    assert 0.6 < m["test"]["click"]["auc"] <= m["bayes"]["click"]["auc"] + 0.02
    assert set(m["baselines"]) == {"gbdt", "cvr_clicked_only"}
    assert "auc_all" in m["baselines"]["cvr_clicked_only"]["cvr"]
    assert set(m["stages"]) == {"model", "cvr_clicked_only"} and m["stages"]["model"]["monitor"] == "loss"
    assert 0 < m["test"]["satisfaction"]["ndcg@10_true"] <= 1
    lines = [json.loads(x) for x in (run.workdir / "history.jsonl").read_text().splitlines()]
    evals = [r["epoch"] for r in lines if r["stage"] == "model" and "valid" in r]
    assert evals == list(range(1, m["epochs_run"] + 1))
    assert all(np.isfinite(r["loss_click"]) for r in lines if r["stage"] == "model" and "loss" in r)
    loaded = ecomjax.load(run.workdir)  # no data read: the schema comes from model.json
    schema = loaded.task.stages(loaded.spec)[0].schema
    assert "user" not in [f.name for f in schema.categorical]  # the config drops it
    data = load_impressions(loaded.config)[0]
    rows = np.arange(64)
    a, b = predict(run.model, data, rows), predict(loaded.model, data, rows)
    np.testing.assert_allclose(a.click, b.click, rtol=1e-6)
    assert m["dwell_sigma"] > 0
    served = loaded.score(_features(data, rows))  # the serving path: the evaluation's probabilities, shown first
    np.testing.assert_allclose(served["click"], b.click_top, rtol=1e-5)
    assert served["satisfaction"].shape == (64,) and (served["satisfaction"] > 0).all()
    with pytest.raises(ValueError, match=r"features\.numeric: shape \[64, 1\], the ranker reads \[64, 2\]"):
        loaded.score({**_features(data, rows), "numeric": data.numeric[rows][:, :1]})
    with pytest.raises(AttributeError, match=r"a ranker run has no recommend\(\); it offers \['score'\]"):
        loaded.recommend([1, 2])
    again = ecomjax.evaluate(run.workdir)  # re-scored from the workdir alone
    assert again["test"]["click"]["auc"] == pytest.approx(m["test"]["click"]["auc"], abs=1e-9)
    assert again["baselines"]["gbdt"]["click"]["auc"] == m["baselines"]["gbdt"]["click"]["auc"]
    assert (run.workdir / "eval" / "metrics.json").is_file()
    assert json.loads((run.workdir / "metrics.json").read_text()) == m  # never rewritten


def test_ranker_adapts_a_finished_ranker_with_lora_and_serves_it_merged(tmp_path):
    no_baselines = {"baselines.gbdt": False, "baselines.clicked_only_cvr": False, "train.epochs": 1}
    base = _train(tmp_path / "base", **no_baselines)
    adapted = _train(tmp_path / "adapted", **no_baselines, **{
        "train.init_from": str(base.workdir), "efficiency.lora.rank": 4, "train.learning_rate": 1e-2})
    m = adapted.metrics
    assert m["lora"]["adapted_from"] == str(base.workdir)
    assert 0 < m["lora"]["trainable_fraction"] < 0.2 and m["lora"]["rank"] == 4
    # tables frozen, dense layers moved through their adapters
    np.testing.assert_array_equal(np.asarray(adapted.model.embedding.tables[0].embedding[...]),
                                  np.asarray(base.model.embedding.tables[0].embedding[...]))
    assert float(np.abs(np.asarray(adapted.model.towers["click"].layers[0].kernel_lora_b[...])).max()) > 0
    # served merged: the plain architecture, the adapted model's predictions
    scorer = ecomjax.load(adapted.workdir).inference
    served_model = nnx.merge(*nnx.split(MultiTaskRanker.from_config(
        adapted.config.model, scorer.schema, scorer.tasks, rngs=nnx.Rngs(0))))
    assert jax.tree.structure(scorer.state) == jax.tree.structure(nnx.state(served_model))
    data = load_impressions(adapted.config)[0]
    rows = np.arange(64)
    served = scorer(data.categorical[rows], data.numeric[rows], data.sequences[rows])
    np.testing.assert_allclose(np.asarray(served["click"]), predict(adapted.model, data, rows).click, rtol=1e-5)
    # efficiency.lora.also_train: the first field's table trains beside the adapters, the others stay
    table = _train(tmp_path / "table", **no_baselines, **{
        "train.init_from": str(base.workdir), "efficiency.lora.rank": 4, "train.learning_rate": 1e-2,
        "efficiency.lora.also_train": "embedding/tables/0/embedding"}).model
    tables = [(np.asarray(a.embedding[...]), np.asarray(b.embedding[...]))
              for a, b in zip(table.embedding.tables, base.model.embedding.tables, strict=True)]
    assert not np.array_equal(*tables[0]) and all(np.array_equal(*pair) for pair in tables[1:])
    with pytest.raises(ValueError, match=r"set train\.init_from"):
        _train(tmp_path / "x", **no_baselines, **{"efficiency.lora.rank": 4})
    with pytest.raises(ValueError, match=r"train.init_from=.*use the same model section"):
        _train(tmp_path / "y", **no_baselines, **{"train.init_from": str(base.workdir), "model.embed_dim": 16})


def test_cli_trains_and_describes_a_ranker_config(tmp_path, capsys):
    from ecomjax.cli import main
    from ecomjax.config import save_config

    config = load_config("configs/ranker_synthetic.yaml", {
        **TINY, "workdir": str(tmp_path / "run"), "train.epochs": 1, "baselines.gbdt": False,
        "baselines.clicked_only_cvr": False, "model.interaction": "dcnv2", "model.sharing": "shared_bottom"})
    path = tmp_path / "ranker.yaml"
    save_config(config, path)
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dcnv2_shared_bottom_esmm" in out and "bayes (truth)" in out
    assert main(["data", "describe", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["impressions"] == 25000 and described["heads"] == ["click", "purchase", "dwell"]
    assert sum(described["rows"].values()) == 25000


def test_ctr_sample_formats_read(tmp_path):
    ali = real_data("ctr-samples/ali_ccp_train_sample.csv")
    data, splits = read_ctr_files("ali_ccp", ali, {"valid": ali.with_name("ali_ccp_val_sample.csv"),
                                                   "test": ali.with_name("ali_ccp_test_sample.csv")})
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "valid": 50, "test": 50}
    assert len(data.schema.categorical) == 23 and len(data.schema.numeric) == 8
    assert data.purchase is not None and not ((data.purchase > 0) & (data.click == 0)).any()
    assert (data.categorical[splits["train"]] > 0).any() and (data.categorical[splits["test"]] == 0).any()
    mtl = real_data("ctr-samples/data_tiny_mtl_train.csv")
    data, splits = read_ctr_files("aliexpress", mtl, {"test": mtl.with_name("data_tiny_mtl_test.csv")})
    assert len(data.schema.categorical) == 16 and len(data.schema.numeric) == 63
    assert len(np.unique(data.groups)) > 50  # search_id groups
    criteo = real_data("ctr-samples/criteo_sample.txt")
    data, _ = read_ctr_files("criteo", criteo, {})
    assert data.purchase is None and len(data.schema.categorical) == 26 and np.isfinite(data.numeric).all()


def test_ctr_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("click,purchase,101,D1\n1,0,5,0.5\n0,1,6,0.1\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:3: purchase=1 with click=0"):
        read_ctr_files("ali_ccp", bad, {})
    bad.write_text("click,purchase,101,D1\n1,0,5,0.5\n0,0,6\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:3: 3 fields, the header has 4"):
        read_ctr_files("ali_ccp", bad, {})
    bad.write_text("click,purchase,101,D1\n1,0,5,abc\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: numeric field 'D1' is not a number: 'abc'"):
        read_ctr_files("ali_ccp", bad, {})
    bad.write_text("click,purchase,101,D1\n2,0,5,1\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: label 'click' must be 0 or 1, got '2'"):
        read_ctr_files("ali_ccp", bad, {})


def test_ranker_trains_on_the_ali_ccp_sample(tmp_path):
    ali = real_data("ctr-samples/ali_ccp_train_sample.csv")
    run = ecomjax.train({"task": "ranker"}, overrides={
        "workdir": str(tmp_path / "ali"), "data.source": "ali_ccp", "data.path": str(ali),
        "data.valid_path": str(ali.with_name("ali_ccp_val_sample.csv")),
        "data.test_path": str(ali.with_name("ali_ccp_test_sample.csv")), "train.batch_size": 32,
        "train.epochs": 2, "model.embed_dim": 4, "model.attention_dim": 8, "baselines.gbdt": False,
        "baselines.clicked_only_cvr": False, "train.progress": False})
    assert run.metrics["tasks"] == ["click", "purchase"]
    assert np.isfinite(run.metrics["test"]["click"]["log_loss"])
