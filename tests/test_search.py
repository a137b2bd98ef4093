"""Product search: relevance files, BM25 (against bm25s), features, metrics, ANN, the trained
pipeline end to end on a slice of the real Home Depot file, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import real_data

from ecomjax.config import ConfigError, load_config
from ecomjax.data.relevance import normalize_text, read_relevance, split_by_query
from ecomjax.errors import DataFormatError
from ecomjax.search.bm25 import BM25, stem, tokenize
from ecomjax.search.features import LEXICAL_FEATURES, ProductPrior, lexical_features
from ecomjax.serve.ann import HNSWIndex, exact_top_k, recall_at_k

HEADER = "id,product_uid,product_title,search_term,relevance\n"


def _write(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "rel.csv"
    path.write_text(header + body)
    return path


def test_read_relevance_home_depot_and_generic_columns(tmp_path):
    data = read_relevance(_write(tmp_path, '2,100001,"Simpson Strong-Tie 12-Gauge Angle",angle bracket,3\n'
                                           "3,100001,Simpson Strong-Tie 12-Gauge Angle,l bracket,2.5\n"))
    assert list(data.queries) == ["angle bracket", "l bracket"]
    assert data.relevance.tolist() == [3.0, 2.5]
    assert data.catalogue()[0].tolist() == ["100001"]
    generic = read_relevance(_write(tmp_path, "drill,p1,Cordless Drill,2\n", header="query,product_id,title,relevance\n"))
    assert generic.titles[0] == "Cordless Drill"


@pytest.mark.parametrize("body, message", [
    ("2,100001,Angle,angle bracket,3.5\n", r"rel.csv:2: relevance 3.5 is outside \[1.0, 3.0\]"),
    ("2,100001,Angle,angle bracket,high\n", r"rel.csv:2: relevance 'high' is not a number"),
    ("2,100001,Angle,,3\n", r"rel.csv:2: empty query"),
    ("2,100001,,angle,3\n", r"rel.csv:2: empty title"),
    ("2,100001,Angle,3\n", r"rel.csv:2: expected 5 comma-separated fields"),
])
def test_read_relevance_names_the_bad_row(tmp_path, body, message):
    with pytest.raises(DataFormatError, match=message):
        read_relevance(_write(tmp_path, body))


def test_read_relevance_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rel.parquet"
    pq.write_table(pa.table({"query": ["drill", "paint"], "product_id": ["p1", "p2"],
                             "title": ["Cordless Drill", "Interior Paint"], "relevance": [3.0, 2.33]}), path)
    data = read_relevance(path)
    assert list(data.product_ids) == ["p1", "p2"] and data.relevance.tolist() == pytest.approx([3.0, 2.33])
    pq.write_table(pa.table({"query": ["drill"], "product_id": ["p1"], "title": ["Drill"], "relevance": [7.0]}), path)
    with pytest.raises(DataFormatError, match=r"rel.parquet:1: relevance 7.0 is outside"):
        read_relevance(path)


def test_read_relevance_missing_column(tmp_path):
    with pytest.raises(DataFormatError, match="no 'relevance' column"):
        read_relevance(_write(tmp_path, "1,2,3\n", header="search_term,product_uid,product_title\n"))


def test_normalize_text():
    assert normalize_text("BEHR Premium 1-gal. #SC-141") == "behr premium 1-gal #sc-141"
    assert normalize_text("2x4  Stud 8 ft.") == "2 x 4 stud 8 ft"
    assert normalize_text("GaugeAngle") == "gauge angle"


def test_split_by_query_keeps_each_query_on_one_side():
    queries = np.array([f"q{i % 300}" for i in range(3000)], dtype=object)
    from ecomjax.data.relevance import RelevanceData

    data = RelevanceData(queries, queries, queries, np.full(3000, 2.0, np.float32))
    splits = split_by_query(data, 0.1, 0.2, seed=0)
    sides = [set(queries[rows]) for rows in splits.values()]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(len(r) for r in splits.values()) == 3000
    assert 0.12 < len(splits["test"]) / 3000 < 0.28
    again = split_by_query(data, 0.1, 0.2, seed=0)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(split_by_query(data, 0.1, 0.2, seed=1)["test"], splits["test"])


def test_stem_folds_plurals_only():
    assert [stem(w) for w in ("drills", "boxes", "batteries", "glass", "gallons", "12s", "bus")] == \
        ["drill", "box", "battery", "glass", "gallon", "12s", "bus"]


def test_bm25_matches_bm25s_on_real_titles():
    bm25s = pytest.importorskip("bm25s")
    data = read_relevance(real_data("homedepot/train.csv"))
    titles = list(data.catalogue()[1][:2000])
    ours = BM25(titles)
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index([tokenize(t) for t in titles], show_progress=False)
    checked = 0
    for query in data.queries[:300]:
        terms = [t for t in dict.fromkeys(tokenize(query)) if t in ours.vocabulary]
        if not terms:
            continue
        np.testing.assert_allclose(ours.scores(query), reference.get_scores(terms), rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 200
    docs = np.arange(50)
    np.testing.assert_allclose(ours.pair_scores(list(data.queries[:50]), docs),
                               ours.text_scores(list(data.queries[:50]), titles[:50]), rtol=1e-5, atol=1e-6)
    top, scores = ours.top_k("cordless drill", 5)
    assert np.all(np.diff(scores) <= 0) and np.allclose(ours.scores("cordless drill")[top], scores)


def test_lexical_features_by_hand():
    row = dict(zip(LEXICAL_FEATURES, lexical_features(["cordless drills 18v"], ["RIDGID 18v Cordless Drill Kit"])[0],
                   strict=True))
    assert row["query_words"] == 3 and row["matched_words"] == 3 and row["all_matched"] == 1
    assert row["last_word_matched"] == 1 and row["numbers_matched"] == 1 and row["matched_bigrams"] == 1
    miss = dict(zip(LEXICAL_FEATURES, lexical_features(["paint roller"], ["Cordless Drill"])[0], strict=True))
    assert miss["matched_words"] == 0 and miss["last_word_matched"] == 0


def test_product_prior_leaves_the_row_out():
    ids = np.array(["a", "a", "b"])
    grades = np.array([3.0, 1.0, 2.0])
    prior = ProductPrior(ids, grades, smoothing=0.0)
    np.testing.assert_allclose(prior.features(["a", "b", "new"]), [[2.0, 2], [2.0, 1], [2.0, 0]])
    np.testing.assert_allclose(prior.leave_one_out(ids, grades)[:2], [[1.0, 1], [3.0, 1]])
    restored = ProductPrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    np.testing.assert_allclose(restored.features(["a"]), prior.features(["a"]))


def test_exact_top_k_and_hnsw_recall(tmp_path):
    rng = np.random.default_rng(0)
    products = rng.normal(size=(3000, 32)).astype(np.float32)
    products /= np.linalg.norm(products, axis=1, keepdims=True)
    queries = products[:50] + 0.3 * rng.normal(size=(50, 32)).astype(np.float32)
    scores, index = exact_top_k(queries, products, 20, chunk_size=1024)
    reference = np.argsort(-(queries @ products.T), axis=1)[:, :20]
    np.testing.assert_array_equal(index, reference)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ products.T, reference, 1), rtol=1e-5)
    hnsw = HNSWIndex(products, m=16, ef_search=100)
    _, approx = hnsw.search(queries, 20)
    assert recall_at_k(approx, index) >= 0.95
    hnsw.save(tmp_path / "index.faiss")
    loaded = HNSWIndex.load(tmp_path / "index.faiss", ef_search=100)
    np.testing.assert_array_equal(loaded.search(queries, 20)[1], approx)
    assert loaded.size == 3000
    with pytest.raises(ValueError, match="ef_search"):
        HNSWIndex(products[:100], ef_search=10).search(queries[:1], 20)


def test_search_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'serve\.candidate'"):
        load_config({"task": "relevance", "serve": {"candidate": 5}})
    with pytest.raises(ConfigError, match="stack_fraction"):
        load_config({"task": "relevance", "data": {"stack_fraction": 1.0}})
    with pytest.raises(ConfigError, match=r"efficiency.lora.b_learning_rate_ratio: 0(\.0)? is out of range"):
        load_config({"task": "relevance", "efficiency": {"lora": {"b_learning_rate_ratio": 0}}})
    with pytest.raises(ConfigError, match=r"unknown key 'bi_encoder\.train\.epochz'"):
        load_config({"task": "relevance"}, ["bi_encoder.train.epochz=3"])
    with pytest.raises(ConfigError, match=r"distill_weight > 0 learns from the cross-encoder"):
        load_config({"task": "relevance"}, ["bi_encoder.distill_weight=0.5", "cross_encoder.enabled=false"])


@pytest.fixture(scope="module")
def trained_search(tmp_path_factory):
    """A full search run (all models, cross-encoder included) on 1,500 real Home Depot rows,
    trained through the CLI with dotted overrides; the cross-encoder through LoRA adapters,
    merged into a plain encoder when saved (what serving then loads)."""
    from ecomjax.cli import main

    source = real_data("homedepot/train.csv")
    root = tmp_path_factory.mktemp("search")
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    small = root / "hd.csv"
    small.write_text("".join(lines[:1501]), encoding="utf-8")
    other = root / "other.csv"
    other.write_text(lines[0] + "".join(lines[20001:20301]), encoding="utf-8")
    config = root / "search.yaml"
    config.write_text(f"task: relevance\nworkdir: {root / 'run'}\ndata:\n  path: {small}\n"
                      "bi_encoder:\n  train:\n    epochs: 3\n    batch_size: 64\n")
    assert main(["train", str(config), "cross_encoder.train.batch_size=16", "gbdt.max_rounds=100",
                 "gbdt.early_stopping_rounds=20", "efficiency.lora.rank=4",
                 "cross_encoder.train.learning_rate=0.0005", "efficiency.lora.b_learning_rate_ratio=2",
                 "efficiency.lora.also_train=.*(norm/.*|/bias|token_type/.*)"]) == 0
    return root / "run", other


def test_search_run_scores_every_model_and_beats_the_mean(trained_search):
    workdir, _ = trained_search
    metrics = json.loads((workdir / "metrics.json").read_text())
    for name in ("bm25", "cosine", "bi_encoder", "cross_encoder", "gbdt_fast", "gbdt"):
        assert 0 < metrics[name]["ndcg@10"] <= 1, name
    for name in ("bi_encoder", "cross_encoder", "gbdt_fast", "gbdt"):
        assert np.isfinite(metrics[name]["rmse"]), name
    # with a few hundred training pairs the GBDT must still beat predicting the mean grade
    assert metrics["gbdt_fast"]["rmse"] < metrics["mean_predictor"]["rmse"]
    assert (workdir / "hnsw.faiss").is_file()
    assert metrics["test_pairs"] > 100 and metrics["gbdt_features"][-1] == "product_judgements"


def test_search_eval_on_another_file_and_pipeline(trained_search, capsys):
    import ecomjax
    from ecomjax.cli import main
    from ecomjax.serve import SearchPipeline

    workdir, other = trained_search
    metrics = ecomjax.evaluate(workdir, **{"data.test_path": str(other)})
    assert metrics["test_pairs"] == 300 and metrics["source"] == str(other)
    saved = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert saved["gbdt"]["rmse"] == pytest.approx(metrics["gbdt"]["rmse"])

    pipeline = SearchPipeline.load(workdir)
    from flax import nnx

    # trained through LoRA adapters, served merged: a plain encoder, what the adapted one computes
    assert not any(hasattr(m, "kernel_lora_a") for _, m in nnx.iter_modules(pipeline.models.cross_encoder))
    adapted = ecomjax.load(workdir).models["cross_encoder"]
    pairs = {k: np.ones((2, 8), np.int32) for k in ("ids", "mask")} | {"types": np.zeros((2, 8), np.int32)}
    np.testing.assert_allclose(np.asarray(pipeline.models.cross_encoder(pairs["ids"], pairs["mask"], pairs["types"])),
                               np.asarray(adapted(pairs["ids"], pairs["mask"], pairs["types"])), rtol=1e-4, atol=1e-4)
    result = pipeline.search("angle bracket", k=5)
    assert len(result.product_ids) == 5 and np.all(np.diff(result.scores) <= 0)
    assert all(type(p) is str for p in result.product_ids)
    assert set(result.timings_ms) == {"encode", "ann", "features", "rerank", "personalize", "total"}
    # the re-ranker's scores are the GBDT's on exactly these candidates' features
    batch = pipeline.search_batch(["angle bracket", "deck over"], k=5)
    assert batch[0].product_ids == result.product_ids
    # personalisation moves a product the user model prefers up
    target = batch[1].product_ids[-1]
    pipeline.config.serve.personalization_weight = 10.0
    pipeline.personalizer = lambda user, ids: np.array([1.0 if i == target else 0.0 for i in ids])
    assert pipeline.search("deck over", user="u1", k=5).product_ids[0] == target
    assert pipeline.search("deck over", k=5).product_ids == batch[1].product_ids  # no user, no blend
    with pytest.raises(ValueError, match="empty after normalisation"):
        pipeline.search("  ")
    with pytest.raises(ValueError, match="k must be in"):
        pipeline.search("drill", k=500)
    with pytest.raises(ConfigError, match=r"takes data\.\*, eval\.\* and report_test overrides only, not \['train\.epochs'\]"):
        ecomjax.evaluate(workdir, **{"train.epochs": 3})

    assert main(["search", str(workdir), "angle", "bracket", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 4 and " 1. " in out


def test_history_personalizer_scores_products_by_the_recommenders_next_item_logits(tmp_path):
    import ecomjax
    from ecomjax.serve import HistoryPersonalizer

    result = ecomjax.train(None, overrides={
        "data.synthetic.num_users": 200, "data.synthetic.num_items": 60, "data.max_len": 10,
        "model.hidden_size": 16, "model.ffn_size": 32, "model.num_layers": 1, "train.batch_size": 16,
        "train.epochs": 2, "train.progress": False, "workdir": str(tmp_path / "rec")})
    personalizer = HistoryPersonalizer(result.workdir)
    history = ["3", "7", "7", "12"]  # synthetic item ids are their dense ids
    scores = personalizer.user_scores(history)
    # the same logits the evaluator computes: right-aligned window, positions counted from the end
    model = ecomjax.load(result.workdir).model
    items = np.zeros((1, 10), np.int32)
    items[0, -4:] = [3, 7, 7, 12]
    segments = (items > 0).astype(np.int32)
    positions = (9 - np.arange(10))[None] * segments
    expected = np.asarray(model.encode(items, positions, segments)[:, -1] @ model.item_table().T)[0]
    assert scores.shape == (61,) and scores[0] == -np.inf  # dense ids 0..60, padding ranked out
    np.testing.assert_allclose(scores[1:], expected[1:61], rtol=1e-5, atol=1e-5)
    mixed = personalizer(history, ["5", "not-a-product", "9"])
    np.testing.assert_allclose(mixed, [scores[5], (scores[5] + scores[9]) / 2, scores[9]], rtol=1e-6)
    with pytest.raises(KeyError, match="unknown to the recommender: \\['999'\\]"):
        personalizer.user_scores(["3", "999"])
    with pytest.raises(ValueError, match="empty history"):
        personalizer.user_scores([])


def test_cli_data_describes_a_search_config(capsys):
    from pathlib import Path

    from ecomjax.cli import main

    real_data("homedepot/train.csv")
    config = Path(__file__).parent.parent / "configs" / "search_homedepot.yaml"
    assert main(["data", "describe", str(config), "data.test_fraction=0.25"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["pairs"] == 59179 and described["products"] == 45713
    assert sum(described["splits"].values()) == 59179
    assert 0.2 < described["splits"]["test"] / 59179 < 0.3


def test_search_run_without_the_cross_encoder(tmp_path):
    import ecomjax
    from ecomjax.serve import SearchPipeline

    source = real_data("homedepot/train.csv")
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    small = tmp_path / "hd.csv"
    small.write_text("".join(lines[:801]), encoding="utf-8")
    run = ecomjax.train({"task": "relevance", "workdir": str(tmp_path / "run"), "data": {"path": str(small)}},
                        cross_encoder__enabled=False, bi_encoder__train__epochs=2, gbdt__max_rounds=50,
                        bi_encoder__train__progress=False)
    assert {"gbdt_fast", "bi_encoder", "bm25"} <= set(run.metrics)
    assert "gbdt" not in run.metrics and "cross_encoder" not in run.metrics
    assert {p.name for p in (run.workdir / "checkpoints").iterdir()} == {"bi_encoder"}
    pipeline = SearchPipeline.load(run.workdir)
    assert len(pipeline.search("angle bracket", k=3).product_ids) == 3
    with pytest.raises(ValueError, match="needs the cross-encoder, which this run did not train"):
        pipeline.search("angle bracket", reranker="gbdt")
