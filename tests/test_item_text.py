"""Text-enhanced recommenders: titles file, feature alignment, item fusion modes, training, restore."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ecomjax
from ecomjax.config import ConfigError, load_config
from ecomjax.data import load_sequences
from ecomjax.data.item_text import (
    append_tokens,
    attribute_token_ids,
    item_text_features,
    normalize_features,
    read_item_attributes,
    read_item_titles,
    title_word_ids,
    title_words,
)
from ecomjax.encoders.feature_cache import cached_array, content_key
from ecomjax.errors import DataFormatError
from ecomjax.models.axes import padded_vocab
from ecomjax.models.item_embedding import ItemEmbedding, ItemFeatures


def write_titles(path, rows, header="s3rec_item_id\tasin\ttitle"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_titles_file_errors_name_file_and_line(tmp_path):
    good = write_titles(tmp_path / "t.tsv", [(1, "A1", "Rose Serum"), (7, "A7", "Matte Lipstick")])
    assert read_item_titles(good) == {1: "Rose Serum", 7: "Matte Lipstick"}
    cases = {
        "fields": ([(1, "A1", "x"), (2, "only two")], r"t.tsv:3: expected 3 tab-separated fields"),
        "id": ([("one", "A1", "x")], r"t.tsv:2: item id 'one' is not an integer"),
        "twice": ([(1, "A", "x"), (1, "B", "y")], r"t.tsv:3: item id 1 appears twice"),
        "empty": ([(1, "A", " ")], r"t.tsv:2: item 1 has an empty title"),
    }
    for rows, message in cases.values():
        with pytest.raises(DataFormatError, match=message):
            read_item_titles(write_titles(tmp_path / "t.tsv", rows))


def test_normalization_centres_on_the_items_with_text_and_keeps_missing_rows_zero():
    rng = np.random.default_rng(0)
    features = np.zeros((6, 4), np.float32)
    features[[1, 2, 4, 5]] = rng.normal(size=(4, 4)) + 5.0  # a large shared direction
    out = normalize_features(features, np.array([1, 2, 4, 5]))
    np.testing.assert_allclose(np.linalg.norm(out[[1, 2, 4, 5]], axis=1), 1.0, rtol=1e-6)
    assert not out[[0, 3]].any()
    centred = features[[1, 2, 4, 5]] - features[[1, 2, 4, 5]].mean(0)
    np.testing.assert_allclose(out[1], centred[0] / np.linalg.norm(centred[0]), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown text normalization 'pca'"):
        normalize_features(features, np.array([1]), "pca")


def test_item_features_follow_the_dataset_ids_and_report_missing_titles(tmp_path):
    titles = write_titles(tmp_path / "t.tsv", [(50, "a", "vitamin c face serum"),
                                               (10, "b", "red nail polish"),
                                               (99, "c", "an item nobody bought")])
    item_ids = np.array([-1, 10, 30, 50])  # dense 1 -> file id 10, 2 -> 30 (no title), 3 -> 50
    text = item_text_features(titles, item_ids, encoder="sentence-transformers/all-MiniLM-L6-v2",
                              normalization="none", cache=False)
    assert text.features.shape == (4, 384) and text.unused == 1
    assert text.missing.tolist() == [2] and not text.features[[0, 2]].any()
    from ecomjax.encoders import TextEncoder

    direct = TextEncoder.from_pretrained().encode(["red nail polish", "vitamin c face serum"])
    np.testing.assert_allclose(text.features[[1, 3]], direct, atol=1e-5)


def test_feature_cache_returns_the_stored_array_and_keys_on_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    key = content_key({"model": "m"}, ["a", "b"])
    first = cached_array("t", key, compute)
    again = cached_array("t", key, compute)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1 and len(list((tmp_path / "features").glob("t-*.npy"))) == 1
    assert content_key({"model": "m"}, ["a", "b"]) == key
    assert content_key({"model": "m"}, ["ab"]) != key  # length-prefixed: no concatenation clash
    assert content_key({"model": "n"}, ["a", "b"]) != key
    (tmp_path / "features" / f"t-{key[:24]}.npy").write_bytes(b"not numpy")  # corrupt entry
    np.testing.assert_array_equal(cached_array("t", key, compute), first)
    assert len(calls) == 2


@pytest.mark.parametrize("fusion", ["add", "gated", "text_only"])
def test_item_embedding_modes_build_one_table_with_zero_padding(fusion):
    features = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    features[3] = 0.0  # an item without a title
    emb = ItemEmbedding(5, 4, fusion=fusion, features=features, rngs=nnx.Rngs(0))
    table = emb.table()
    assert table.shape == (padded_vocab(6), 4)
    assert not np.asarray(table[6:]).any()  # padding rows for sharding stay zero
    assert not np.asarray(emb.text_vectors()[0]).any()  # the padding id has no text
    np.testing.assert_allclose(emb(jnp.array([[1, 3, 5]])), table[jnp.array([[1, 3, 5]])], rtol=1e-5, atol=1e-7)
    if fusion == "text_only":
        assert not np.asarray(table[3]).any()  # no text, no ID: nothing to represent it
        # two items with the same title get the same vector: content alone decides
        same = ItemEmbedding(5, 4, fusion=fusion, features=np.vstack([features[:5], features[1:2]]),
                             rngs=nnx.Rngs(0)).table()
        np.testing.assert_allclose(same[5], same[1])
    features_state = nnx.state(emb, ItemFeatures)
    assert len(jax.tree.leaves(features_state)) == 1
    assert all("features" not in str(path) for path, _ in nnx.to_flat_state(nnx.state(emb, nnx.Param)))


def test_item_embedding_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="item features are required for item fusion 'add'"):
        ItemEmbedding(5, 4, fusion="add", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="item fusion is 'id'"):
        ItemEmbedding(5, 4, fusion="id", features=np.zeros((6, 3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"must be \[num_items \+ 1, D\] = \[6, D\], got \[5, 3\]"):
        ItemEmbedding(5, 4, fusion="add", features=np.ones((5, 3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="NaN"):
        ItemEmbedding(5, 4, fusion="add", features=np.full((6, 3), np.nan), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown item fusion 'mean'"):
        ItemEmbedding(5, 4, fusion="mean", rngs=nnx.Rngs(0))


def test_id_dropout_drops_whole_id_vectors_in_training_only():
    features = np.random.default_rng(2).normal(size=(301, 8)).astype(np.float32)
    emb = ItemEmbedding(300, 4, fusion="add", features=features, id_dropout=0.5, rngs=nnx.Rngs(0))
    ids, text = emb.ids.embedding[...], emb.text_vectors()
    np.testing.assert_allclose(emb.table(), ids + text, rtol=1e-6)  # deterministic: no dropout
    dropped = emb.table(deterministic=False, rngs=nnx.Rngs(dropout=1))[1:301]
    is_text_only = np.all(np.isclose(dropped, text[1:301], atol=1e-7), axis=1)
    is_scaled = np.all(np.isclose(dropped, 2 * ids[1:301] + text[1:301], atol=1e-6), axis=1)
    assert np.all(is_text_only ^ is_scaled)  # each row: ID gone entirely, or kept (scaled 1/(1-p))
    assert 0.35 < is_text_only.mean() < 0.65
    tokens = emb(jnp.array([[1, 2, 3]]), deterministic=False, rngs=nnx.Rngs(dropout=3))
    assert tokens.shape == (1, 3, 4)


def test_adapter_and_zero_id_init_change_the_table_as_documented():
    features = np.random.default_rng(3).normal(size=(6, 8)).astype(np.float32)
    adapted = ItemEmbedding(5, 4, fusion="add", features=features, text_adapter_size=16, rngs=nnx.Rngs(0))
    assert adapted.text_adapter.kernel[...].shape == (8, 16) and adapted.text_proj.kernel[...].shape == (16, 4)
    assert adapted.table().shape == (padded_vocab(6), 4)
    residual = ItemEmbedding(5, 4, fusion="add", features=features, id_init="zeros", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(residual.table(), residual.text_vectors())  # starts as the titles
    with pytest.raises(ValueError, match="id_dropout needs item fusion add or gated"):
        ItemEmbedding(5, 4, fusion="text_only", features=features, id_dropout=0.2, rngs=nnx.Rngs(0))


def test_title_words_vocabulary_and_ids():
    ids, vocabulary = title_word_ids(["OPI Nail Lacquer, Red", "OPI Nail Polish", "L'Oreal Paris Lipstick Red",
                                      "Unique Thing"], min_items=2, max_words=3)
    assert vocabulary == ("nail", "opi", "red")  # words of one title only are left out
    index = {w: i + 1 for i, w in enumerate(vocabulary)}
    assert ids.tolist() == [[index["opi"], index["nail"], index["red"]], [index["opi"], index["nail"], 0],
                            [index["red"], 0, 0], [0, 0, 0]]
    assert title_words("L'Oreal e.l.f. Anti-Aging 0.5 oz, 0.5 OZ") == ["l'oreal", "e.l.f", "anti-aging", "0.5", "oz"]
    with pytest.raises(ValueError, match="min_items and max_words must be >= 1"):
        title_word_ids(["a"], min_items=0)


def test_item_attributes_file_tokens_and_errors(tmp_path):
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps({"10": [3, 7, 3], "30": [7], "50": [], "99": [5]}))
    assert read_item_attributes(path) == {10: [3, 7], 30: [7], 50: [], 99: [5]}  # repeats once
    ids, names = attribute_token_ids([[3, 7], [7], [], [5, 3]], min_items=2)
    assert names == ("attr:3", "attr:7")  # attribute 5: one item only, another per-item ID
    assert ids.tolist() == [[1, 2], [2, 0], [0, 0], [1, 0]]
    words, vocabulary = append_tokens(np.array([[1, 0], [2, 1]]), ("opi", "red"), np.array([[2, 0], [0, 1]]),
                                      ("attr:3", "attr:7"))
    assert vocabulary == ("opi", "red", "attr:3", "attr:7")
    assert words.tolist() == [[1, 0, 4, 0], [2, 1, 0, 3]]  # attribute ids shifted past the words
    cases = {"[1, 2]": "expected a non-empty JSON object", '{"x": [1]}': "item id 'x' is not an integer",
             '{"1": [1, "brand"]}': r"item 1: attributes must be a list of integer ids >= 0",
             '{"1": [': "not valid JSON"}
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataFormatError, match=message):
            read_item_attributes(path)


def test_item_features_append_attribute_tokens_after_title_words(tmp_path):
    titles = write_titles(tmp_path / "t.tsv", [(10, "a", "opi red polish"), (30, "b", "opi gel"),
                                               (50, "c", "red serum")])
    attributes = tmp_path / "attrs.json"
    attributes.write_text(json.dumps({"10": [4, 8], "30": [4], "50": [9], "99": [8]}))
    text = item_text_features(titles, np.array([-1, 10, 30, 50]), encoder="sentence-transformers/all-MiniLM-L6-v2",
                              word_min_items=2, attributes=attributes)
    # attribute 8 is carried by item 99 too, but the dataset never mentions 99: one item, dropped
    assert text.vocabulary == ("opi", "red", "attr:4")
    assert text.words.tolist() == [[0] * 32 + [0, 0], [1, 2] + [0] * 30 + [3, 0], [1] + [0] * 31 + [3, 0],
                                   [2] + [0] * 31 + [0, 0]]


def test_item_embedding_adds_the_mean_of_learned_title_word_vectors():
    features = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)
    words = np.array([[0, 0], [1, 2], [2, 0], [0, 0], [1, 1], [3, 0]], dtype=np.int32)
    emb = ItemEmbedding(5, 4, fusion="add", features=features, words=words, rngs=nnx.Rngs(0))
    table = np.asarray(emb.word_embedding.embedding[...])
    expected = np.stack([np.zeros(4), (table[1] + table[2]) / 2, table[2], np.zeros(4), table[1], table[3]])
    np.testing.assert_allclose(emb.word_vectors()[:6], expected, rtol=1e-6, atol=1e-7)
    without = ItemEmbedding(5, 4, fusion="add", features=features, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(emb.text_vectors()[:6] - emb.word_vectors()[:6],
                               jnp.where(jnp.any(emb.features[:6] != 0, axis=1, keepdims=True),
                                         emb.text_proj(emb.features[:6]), 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb(jnp.array([[1, 5]])), emb.table()[jnp.array([[1, 5]])], rtol=1e-5, atol=1e-7)
    assert emb.words[...].shape == (padded_vocab(6), 2) and without.words is None
    with pytest.raises(ValueError, match="title words need the title features"):
        ItemEmbedding(5, 4, fusion="id", words=words, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"title words must be integer ids \[num_items \+ 1, max_words\]"):
        ItemEmbedding(5, 4, fusion="add", features=features, words=words[:5], rngs=nnx.Rngs(0))


def test_rare_items_lose_their_id_and_every_item_gains_its_popularity_bucket_vector():
    features = np.random.default_rng(5).normal(size=(7, 8)).astype(np.float32)
    counts = np.array([0, 0, 1, 3, 4, 9, 200])  # item 0 is padding
    emb = ItemEmbedding(6, 4, fusion="add", features=features, counts=counts, id_min_interactions=4,
                        count_buckets=4, rngs=nnx.Rngs(0))
    ids = np.asarray(emb.ids.embedding[...])
    buckets = np.asarray(emb.count_embedding.embedding[...])
    # floor(log2(1 + count)), capped at 3: 0, 1, 2, 2, 3, 3 for items 1..6
    expected_buckets = buckets[[0, 1, 2, 2, 3, 3]]
    np.testing.assert_allclose(emb.count_vectors()[1:7], expected_buckets, rtol=1e-6)
    assert not np.asarray(emb.count_vectors())[[0, 7]].any()  # padding rows stay zero
    text = np.asarray(emb.text_proj(emb.features[...]))[:7]  # the projected title vectors
    table = np.asarray(emb.table())[:7]
    np.testing.assert_allclose(table[1:4], text[1:4] + expected_buckets[:3], rtol=1e-5, atol=1e-6)  # < 4: no ID
    np.testing.assert_allclose(table[4:7], ids[4:7] + text[4:7] + expected_buckets[3:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb(jnp.array([[2, 6, 0]])), emb.table()[jnp.array([[2, 6, 0]])], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"item counts must be integers >= 0 of shape \[num_items \+ 1\] = \[7\]"):
        ItemEmbedding(6, 4, fusion="add", features=features, counts=counts[:6], count_buckets=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="id_min_interactions needs item fusion add or gated"):
        ItemEmbedding(6, 4, fusion="text_only", features=features, counts=counts, id_min_interactions=2,
                      rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="need item content vectors"):
        ItemEmbedding(6, 4, counts=counts, count_buckets=2, rngs=nnx.Rngs(0))


def test_config_requires_titles_for_text_fusion_and_fusion_for_titles():
    with pytest.raises(ConfigError, match=r"model.item_fusion='add' needs model.item_text"):
        load_config(None, ["model.item_fusion=add"])
    with pytest.raises(ConfigError, match=r"model.item_text is set but model.item_fusion is 'id'"):
        load_config(None, ["model.item_text=titles.tsv"])
    with pytest.raises(ConfigError, match=r"model.item_fusion"):
        load_config(None, ["model.item_fusion=concat", "model.item_text=t.tsv"])
    with pytest.raises(ConfigError, match=r"item_id_dropout needs model.item_fusion add or gated"):
        load_config(None, ["model.item_id_dropout=0.3"])
    with pytest.raises(ConfigError, match=r"item_id_init='zeros' .* needs model.item_fusion add or gated"):
        load_config(None, ["model.item_id_init=zeros", "model.item_fusion=text_only", "model.item_text=t.tsv"])
    with pytest.raises(ConfigError, match=r"title_word_min_items needs titles"):
        load_config(None, ["model.title_word_min_items=2"])
    with pytest.raises(ConfigError, match=r"item_id_min_interactions leaves rare items their title vector only"):
        load_config(None, ["model.item_id_min_interactions=5"])
    with pytest.raises(ConfigError, match=r"item_count_buckets adds to the content vector"):
        load_config(None, ["model.item_count_buckets=8"])
    with pytest.raises(ConfigError, match=r"item_count_buckets: -1 must be >= 0"):
        load_config(None, ["model.item_count_buckets=-1", "model.item_fusion=add", "model.item_text=t.tsv"])
    with pytest.raises(ConfigError, match=r"model.item_attributes needs titles"):
        load_config(None, ["model.item_attributes=a.json"])
    with pytest.raises(ConfigError, match=r"title_word_min_items: -1 must be >= 0"):
        load_config(None, ["model.title_word_min_items=-1", "model.item_fusion=add", "model.item_text=t.tsv"])
    with pytest.raises(ConfigError, match=r"item_id_dropout: 1.0 is out of range"):
        load_config(None, ["model.item_id_dropout=1.0", "model.item_fusion=add", "model.item_text=t.tsv"])


TINY = {
    "data.source": "file", "data.max_len": 12, "model.hidden_size": 16, "model.ffn_size": 32,
    "model.num_layers": 1, "train.batch_size": 8, "train.epochs": 2, "train.warmup_steps": 5,
    "train.progress": False, "eval.batch_size": 64,
}


def test_text_fused_sasrec_trains_keeps_features_fixed_and_restores(tmp_path, beauty_path):
    """600 real Beauty users with their real titles: train, check the features never move, and
    restore the run (features come back from the checkpoint, bit-identical)."""

    slice_path = tmp_path / "beauty_600.txt"
    slice_path.write_text("".join(beauty_path.read_text().splitlines(keepends=True)[:600]))
    titles = beauty_path.parent / "Beauty_titles.tsv"
    result = ecomjax.train(None, overrides={
        **TINY, "data.path": str(slice_path), "workdir": str(tmp_path / "run"),
        "model.item_fusion": "gated", "model.item_text": str(titles), "model.title_word_min_items": 2,
        "model.item_attributes": str(beauty_path.parent / "Beauty_item2attributes.json"),
        "model.item_id_min_interactions": 3, "model.item_count_buckets": 6})
    m = result.metrics
    assert m["test"]["users"] == 600 and 0 < m["test"]["hr@10"] <= 1
    model = result.model
    dataset = load_sequences(load_config(tmp_path / "run" / "config.yaml").data)
    expected = item_text_features(titles, dataset.item_ids, encoder="sentence-transformers/all-MiniLM-L6-v2",
                                  word_min_items=2, attributes=beauty_path.parent / "Beauty_item2attributes.json")
    stored = np.asarray(model.item_embedding.features[...])
    np.testing.assert_array_equal(stored[: dataset.num_items + 1], expected.features)  # untouched by training
    words = np.asarray(model.item_embedding.words[...])
    np.testing.assert_array_equal(words[: dataset.num_items + 1], expected.words)
    assert len(expected.vocabulary) > 50 and (words > 0).any()
    assert sum(v.startswith("attr:") for v in expected.vocabulary) > 20  # brands and categories too
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in history if "loss" in r)
    run = ecomjax.load(tmp_path / "run")
    np.testing.assert_array_equal(np.asarray(run.model.item_embedding.features[...]), stored)
    np.testing.assert_array_equal(np.asarray(run.model.item_embedding.words[...]), words)
    from ecomjax.data.split import leave_one_out

    counts = leave_one_out(dataset).train_item_counts()  # training part only: no test target counted
    np.testing.assert_array_equal(np.asarray(model.item_embedding.counts[...])[: dataset.num_items + 1], counts)
    np.testing.assert_array_equal(np.asarray(run.model.item_embedding.counts[...]),
                                  np.asarray(model.item_embedding.counts[...]))
    np.testing.assert_array_equal(np.asarray(run.model.item_table()), np.asarray(model.item_table()))
