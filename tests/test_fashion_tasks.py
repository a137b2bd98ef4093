"""Fashion catalogue tasks: relevance, ranking metrics, losses, and short real-data runs."""

import numpy as np
import pytest
from conftest import real_data

from ecomjax.data.fashion import MISSING, compose_queries, read_fashion_catalog
from ecomjax.tasks.attributes import masked_cross_entropy
from ecomjax.tasks.fit import FitConfig
from ecomjax.tasks.retrieval import (
    UNSPECIFIED,
    attribute_codes,
    query_codes,
    ranking_metrics,
    relevance_grades,
)


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


def test_short_real_runs_learn_attributes_and_retrieval(catalog):
    """1,000 real products, real frozen features: each modality learns what it can see."""
    from ecomjax.data.fashion_features import encode_catalog
    from ecomjax.tasks.fashion import FashionExperiment, FashionSetup

    ids = catalog.ids[:1000]
    features = encode_catalog(catalog, ids, cache=False)
    assert features.text_tokens.shape[:2] == features.text_mask.shape
    assert features.image_map.shape == (1000, 4, 4, 1280)
    setup = FashionSetup(min_count=10, train_queries=300, paraphrases=1, eval_queries=60,
                         attribute_fit=FitConfig(epochs=15, batch_size=64, learning_rate=3e-3, patience=15),
                         retrieval_fit=FitConfig(epochs=2, batch_size=64, learning_rate=2e-3))
    experiment = FashionExperiment(catalog, features, setup, cache=False)
    summary = experiment.summary()
    assert sum(summary["products"].values()) == 1000
    assert not set(experiment.query_texts[i] for i in experiment.query_rows["test"]) & set(
        experiment.query_texts[i] for i in experiment.query_rows["train"])
    results = {mode: experiment.attributes(mode).accuracy["test"] for mode in ("text", "image")}
    labels, test = experiment.labels, experiment.rows["test"]

    def majority(name):
        known = labels[name][test][labels[name][test] != MISSING]
        return np.bincount(known).max() / len(known)

    # colour is invisible in the cleaned titles, visible in the photo; article type in both
    assert results["image"]["base_colour"] > results["text"]["base_colour"] + 0.1
    assert results["image"]["base_colour"] > majority("base_colour")
    assert results["text"]["article_type"] > majority("article_type") + 0.3
    found = experiment.retrieval("concat")
    assert 0.0 < found.metrics["test"]["ndcg@10"] <= 1.0 and found.fit.epochs_run == 2


def test_fit_keeps_the_best_epoch_and_refuses_nan():
    import jax.numpy as jnp
    from flax import nnx

    from ecomjax.tasks.fit import fit

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    y = x @ jnp.array([[1.0], [-2.0]])

    def loss(model, data, rows, key):
        return jnp.mean((model(data["x"][rows]) - data["y"][rows]) ** 2)

    scores = []

    def validate(model):  # a score that peaks at epoch 3, then gets worse
        scores.append(float(model.kernel[...].sum()))
        return [0.1, 0.5, 0.9, 0.4, 0.3, 0.2][len(scores) - 1]

    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    result = fit(model, loss, {"x": x, "y": y}, np.arange(64), validate,
                 FitConfig(epochs=6, batch_size=16, learning_rate=5e-2, patience=3))
    assert (result.best_epoch, result.epochs_run, result.best_score) == (3, 6, 0.9)
    np.testing.assert_allclose(float(model.kernel[...].sum()), scores[2], rtol=1e-6)  # epoch 3's weights
    with pytest.raises(FloatingPointError, match="validation score is nan after epoch 1"):
        fit(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), loss, {"x": x, "y": y}, np.arange(64),
            lambda m: float("nan"), FitConfig(epochs=2, batch_size=16))
    with pytest.raises(ValueError, match="8 training rows are fewer than one batch of 16"):
        fit(model, loss, {"x": x, "y": y}, np.arange(8), validate, FitConfig(batch_size=16))
