"""Fashion catalogue tasks: relevance, ranking metrics, losses, and short real-data runs."""

import numpy as np
import pytest
from conftest import real_data

import ecomjax
from ecomjax.data.fashion import MISSING, read_fashion_catalog
from ecomjax.data.fashion_queries import (
    UNSPECIFIED,
    attribute_codes,
    compose_queries,
    query_codes,
    relevance_grades,
)
from ecomjax.eval.graded import retrieval_metrics as ranking_metrics
from ecomjax.tasks.attributes import masked_cross_entropy


@pytest.fixture(scope="module")
def catalog():
    real_data("fashion-products/styles.csv")
    real_data("fashion-products/images-128.zip")
    return read_fashion_catalog()


def test_relevance_grades_equal_the_grades_compose_queries_assigns(catalog):
    pool = catalog.products[:800]
    queries = compose_queries(pool, 60, seed=4)
    values: dict = {f: {} for f in ("article_type", "gender", "season", "usage", "base_colour")}
    codes_p, codes_q = attribute_codes(pool, values), query_codes(queries, values)
    assert (codes_q[:, 0] != UNSPECIFIED).all()  # every query names an article type
    grades = relevance_grades(codes_q, codes_p)
    ids = [p.id for p in pool]
    for q, query in enumerate(queries):
        expected = np.array([query.grades.get(i, 0) for i in ids])
        np.testing.assert_array_equal(grades[q], expected, err_msg=query.text)
        assert set(np.array(ids)[grades[q] == 2]) == set(query.relevant)


def test_ranking_metrics_against_hand_computed_values():
    grades = np.array([[2, 0, 1, 0], [0, 0, 0, 2]])
    perfect = ranking_metrics(np.array([[4, 1, 3, 0], [0, 1, 2, 3.0]]), grades, k=2)
    assert perfect == {"ndcg@2": 1.0, "recall@2": 1.0}
    # query 0 ranks 1,0 (gains 0,3), ideal 3,1; query 1 ranks item 0,1 (no hit)
    scores = np.array([[3, 4, 0, 1], [4, 3, 2, 1.0]])
    dcg0 = 3 / np.log2(3)
    ideal0 = 3 + 1 / np.log2(3)
    m = ranking_metrics(scores, grades, k=2)
    np.testing.assert_allclose(m["ndcg@2"], (dcg0 / ideal0 + 0) / 2)
    np.testing.assert_allclose(m["recall@2"], (1 + 0) / 2)
    with pytest.raises(ValueError, match="1 queries have no relevant product"):
        ranking_metrics(scores, np.array([[2, 0, 0, 0], [1, 0, 0, 0]]), k=2)


def test_masked_cross_entropy_ignores_unknown_labels():
    import jax.numpy as jnp

    logits = jnp.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    full = masked_cross_entropy(logits, jnp.array([0, 1, MISSING]))
    only = masked_cross_entropy(logits[:2], jnp.array([0, 1]))
    np.testing.assert_allclose(full, only, rtol=1e-6)
    assert float(masked_cross_entropy(logits, jnp.full(3, MISSING))) == 0.0


def test_short_real_runs_learn_attributes_and_retrieval(catalog, tmp_path):
    """1,000 real products, real frozen features: each modality learns what it can see, through
    the shipped configs and the one loop (features computed once, then read from the cache)."""
    common = {"data.max_products": 1000, "data.min_count": 10, "train.progress": False}
    attributes = {"train.epochs": 15, "train.batch_size": 64, "train.learning_rate": 3e-3,
                  "train.early_stopping_patience": 15}
    results = {}
    for mode in ("text", "image"):
        run = ecomjax.train("configs/fashion_attributes.yaml", overrides={
            **common, **attributes, "model.fusion": mode, "workdir": str(tmp_path / f"attr_{mode}")})
        results[mode] = run.metrics["test"]
    setup = run.metrics["setup"]
    assert sum(setup["products"].values()) == 1000 and setup["feature_shapes"]["image_map"] == [1000, 4, 4, 1280]
    from ecomjax.data.fashion_setup import FashionDataConfig, prepare_fashion

    data = prepare_fashion(FashionDataConfig(max_products=1000, min_count=10), seed=0, queries=True)
    labels, test = data.labels, data.rows["test"]

    def majority(name):
        known = labels[name][test][labels[name][test] != MISSING]
        return np.bincount(known).max() / len(known)

    # colour is invisible in the cleaned titles, visible in the photo; article type in both
    assert results["image"]["base_colour"] > results["text"]["base_colour"] + 0.1
    assert results["image"]["base_colour"] > majority("base_colour")
    assert results["text"]["article_type"] > majority("article_type") + 0.3
    found = ecomjax.train("configs/fashion_retrieval.yaml", overrides={
        **common, "data.train_queries": 300, "data.paraphrases": 1, "data.eval_queries": 60, "train.epochs": 2,
        "train.batch_size": 64, "train.learning_rate": 2e-3, "workdir": str(tmp_path / "retrieval")})
    assert 0.0 < found.metrics["test"]["ndcg@10"] <= 1.0 and found.metrics["epochs_run"] == 2
    assert found.metrics["setup"]["queries"]["train"] != data.summary()["queries"]["train"]  # 300 vs 6000 wordings
    # no test wording was seen in training
    train_texts = {data.query_texts[i] for i in data.query_rows["train"]}
    assert not {data.query_texts[i] for i in data.query_rows["test"]} & train_texts
    result = ecomjax.load(found.workdir).search("men black tshirt", k=5)
    assert len(result.product_ids) == 5 and np.all(np.diff(result.scores) <= 0)
    # `ecomjax eval` re-scores both tasks from the workdir into eval/metrics.json, the training
    # metrics left as they were
    for workdir, trained in ((tmp_path / "attr_image", results["image"]), (found.workdir, found.metrics["test"])):
        before = (workdir / "metrics.json").read_text()
        again = ecomjax.evaluate(workdir)
        assert (workdir / "eval" / "metrics.json").is_file() and (workdir / "metrics.json").read_text() == before
        for key, value in trained.items():
            if isinstance(value, float):
                assert again["test"][key] == pytest.approx(value, abs=1e-6), key
