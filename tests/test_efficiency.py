"""Efficiency toolkit: int8 quantization (qwix dense layers + per-row tables), pruning as an optax
transformation, structured shrinking, and their wiring into training runs."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ecomjax
from ecomjax.config import ConfigError, PruneConfig, QuantizeConfig, load_config
from ecomjax.efficiency.prune import pruning, shrink_pruned, sparsity_at, sparsity_report
from ecomjax.efficiency.quantize import (
    Int8Table,
    abstract_quantized,
    fake_quantize_rows,
    load_quantized,
    quantization_aware,
    quantize_model,
    quantize_rows,
    quantized_layer_bytes,
    recommender_example_inputs,
    save_quantized,
)
from ecomjax.models.sasrec import SASRec
from ecomjax.models.sequential import SequentialModelConfig

INT8 = QuantizeConfig(weights="int8")


def _sasrec(seed: int = 0, **overrides) -> SASRec:
    config = SequentialModelConfig(dropout=0.0, attention_dropout=0.0, **overrides)
    return SASRec(config, num_items=500, max_len=20, rngs=nnx.Rngs(seed))


def _user_batch(rng: np.random.Generator, batch: int = 6, max_len: int = 20):
    items = jnp.asarray(rng.integers(1, 501, size=(batch, max_len)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(max_len - 1, -1, -1, dtype=jnp.int32), (batch, max_len))
    return items, positions, jnp.ones((batch, max_len), jnp.int32)


def _scores(model, items, positions, segments):
    return model.catalogue_scores(model.encode(items, positions, segments)[:, -1])


def test_row_quantization_error_is_half_a_step_and_zero_rows_stay_zero():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)) * rng.lognormal(size=(50, 1))  # rows of very different norms
    table[3] = 0.0
    q, scale = quantize_rows(jnp.asarray(table, jnp.float32))
    assert q.dtype == jnp.int8 and scale.shape == (50, 1)
    error = np.abs(np.asarray(q, np.float64) * np.asarray(scale) - table)
    assert (error <= np.asarray(scale) / 2 + 1e-7).all()  # per-row step, so small rows stay precise
    assert (np.asarray(q[3]) == 0).all() and float(scale[3, 0]) == 1.0


@pytest.mark.parametrize("activations", ["int8", "none"])
def test_int8_table_lookup_and_scores_match_the_float_table(activations):
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.normal(size=(300, 32)), jnp.float32)
    hidden = jnp.asarray(rng.normal(size=(4, 32)), jnp.float32)
    t = Int8Table(table, activations=activations)
    ids = jnp.asarray([0, 5, 299])
    np.testing.assert_allclose(t(ids), t.dequantize()[ids])
    np.testing.assert_allclose(t.dequantize(), table, atol=float(jnp.abs(table).max()) / 127)
    exact = hidden @ table.T
    got = t.scores(hidden)
    assert got.dtype == jnp.float32 and got.shape == (4, 300)
    # two roundings (weights, and activations for int8) of ~0.4% each on 32-term dot products
    assert float(jnp.abs(got - exact).max()) < 0.03 * float(jnp.abs(exact).max())
    assert np.corrcoef(np.asarray(got).ravel(), np.asarray(exact).ravel())[0, 1] > 0.9995


def test_int8_table_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[rows, width\]"):
        Int8Table(jnp.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="activations"):
        Int8Table(jnp.zeros((3, 4)), activations="int4")


def test_quantized_sasrec_keeps_rankings_and_quarters_the_bytes():
    model = _sasrec()
    rng = np.random.default_rng(2)
    batch = _user_batch(rng)
    quantized = quantize_model(model, INT8, *recommender_example_inputs(20), method="encode")
    # the float model is untouched
    assert isinstance(model.item_embedding.ids, nnx.Embed)
    assert model.blocks[0].feed_forward.up.kernel[...].dtype == jnp.float32
    assert isinstance(quantized.item_embedding.ids, Int8Table)
    assert isinstance(quantized.position_embedding, nnx.Embed)  # 20 rows < min_table_rows: kept float
    exact, got = _scores(model, *batch), _scores(quantized, *batch)
    assert float(jnp.abs(got - exact).max()) < 0.05 * float(jnp.abs(exact).max())
    top_exact = np.argsort(-np.asarray(exact), axis=1)[:, :10]
    top_got = np.argsort(-np.asarray(got), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_exact, top_got, strict=True)])
    assert overlap >= 0.8
    layers = quantized_layer_bytes(model, quantized)
    assert "item_embedding/ids" in layers and "blocks/1/feed_forward/down/kernel" in layers
    assert len(layers) == 9  # 2 blocks x (qkv, out, up, down) + the item table
    for name, entry in layers.items():
        assert entry["quantized"] <= 0.3 * entry["float"], name


def test_quantized_model_saves_and_loads_without_float_weights(tmp_path):
    model = _sasrec()
    quantized = quantize_model(model, INT8, *recommender_example_inputs(20), method="encode")
    save_quantized(quantized, tmp_path)
    abstract = abstract_quantized(lambda: _sasrec(seed=7), INT8, *recommender_example_inputs(20), method="encode")
    loaded = load_quantized(abstract, tmp_path)
    batch = _user_batch(np.random.default_rng(3))
    np.testing.assert_array_equal(_scores(loaded, *batch), _scores(quantized, *batch))
    wider = abstract_quantized(lambda: _sasrec(ffn_size=128), INT8, *recommender_example_inputs(20), method="encode")
    with pytest.raises(ValueError, match=r"feed_forward/(up|down)/kernel.*expects int8\[128"):
        load_quantized(wider, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"quantized\.npz"):
        load_quantized(abstract, tmp_path / "missing")


def test_quantize_needs_a_weight_type():
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize_model(_sasrec(), QuantizeConfig(), *recommender_example_inputs(20), method="encode")


def _train_toy(tx, params, steps: int):
    """Adam-style steps on a quadratic pulling every weight away from zero."""
    state = tx.init(params)
    target = jax.tree.map(lambda p: jnp.ones_like(p) * 2.0, params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p, t: p - t, params, target)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _pruned_once(config: PruneConfig, params, **pruning_args):
    """``params`` after the first step of ``pruning(config, ...)`` with zero gradients: the mask
    of a one-shot schedule (``begin_fraction = end_fraction = 0``) applied."""
    tx = pruning(config, total_steps=10, **pruning_args)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)


def test_fake_quantization_rounds_forward_and_passes_gradients_straight_through():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 8)), jnp.float32)
    q, scale = quantize_rows(x)
    np.testing.assert_array_equal(np.asarray(fake_quantize_rows(x)), np.asarray(q.astype(jnp.float32) * scale))
    grad = jax.grad(lambda v: jnp.sum(fake_quantize_rows(v) * jnp.arange(8.0)))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.broadcast_to(np.arange(8.0), (5, 8)))


def test_quantization_aware_model_computes_what_the_int8_export_serves():
    model = _sasrec()
    example = recommender_example_inputs(20)
    aware = quantization_aware(model, INT8, *example, method="encode")
    served = quantize_model(model, QuantizeConfig(weights="int8", tables=False), *example, method="encode")
    # the same parameters, at the same paths: checkpoints and the export read them unchanged
    assert jax.tree.structure(nnx.state(aware, nnx.Param)) == jax.tree.structure(nnx.state(model, nnx.Param))
    batch = _user_batch(np.random.default_rng(2))
    float_out, aware_out, int8_out = (m.encode(*batch) for m in (model, aware, served))
    assert float(jnp.max(jnp.abs(aware_out - float_out))) > 1e-4  # the rounding is there while training
    np.testing.assert_allclose(aware_out, int8_out, rtol=1e-5, atol=1e-5)  # fake int8 == served int8
    graphdef, params, rest = nnx.split(aware, nnx.Param, ...)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p, rest).encode(*batch) ** 2)

    grads = jax.grad(loss)(params)
    kernel = grads["blocks"][0]["feed_forward"]["up"]["kernel"][...]
    assert float(jnp.linalg.norm(kernel)) > 0  # straight-through: the float weights learn


def test_sparsity_schedule_is_cubic_between_begin_and_end():
    assert float(sparsity_at(jnp.asarray(0), 0.5, 10, 110)) == 0.0
    assert float(sparsity_at(jnp.asarray(60), 0.5, 10, 110)) == pytest.approx(0.5 * (1 - 0.5 ** 3))
    assert float(sparsity_at(jnp.asarray(500), 0.5, 10, 110)) == 0.5


def test_magnitude_pruning_reaches_the_target_and_pruned_weights_stay_zero():
    rng = np.random.default_rng(4)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(40, 30)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(30,)), jnp.float32)},
              "table": {"embedding": jnp.asarray(rng.normal(size=(100, 8)), jnp.float32)}}
    config = PruneConfig(sparsity=0.5, begin_fraction=0.1, end_fraction=0.5, frequency=5)
    tx = optax.chain(optax.adam(0.05), pruning(config, total_steps=100))
    at_end = _train_toy(tx, params, 51)
    report = sparsity_report(at_end)
    assert report["per_tensor"] == {"dense/kernel": 0.5, "table/embedding": 0.5}
    assert float(jnp.min(jnp.abs(at_end["dense"]["bias"]))) > 0  # 1-D parameters are not pruned
    zero = np.asarray(at_end["dense"]["kernel"]) == 0
    # 50 more steps of a loss that pulls every weight to 2.0: the pruned ones do not move
    later = _train_toy(tx, params, 101)
    np.testing.assert_array_equal(np.asarray(later["dense"]["kernel"]) == 0, zero)
    assert sparsity_report(later)["overall"] == 0.5


def test_pruning_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"sparsity=0.0 must be in \(0, 1\)"):
        pruning(PruneConfig(sparsity=0.0), 100)
    with pytest.raises(ValueError, match="matches no parameter"):
        pruning(PruneConfig(sparsity=0.5, targets="nothing_here"), 100).init({"w": jnp.ones((3, 3))})
    with pytest.raises(ValueError, match="no feed_forward"):
        pruning(PruneConfig(sparsity=0.5, method="neurons"), 100).init({"w": jnp.ones((3, 3))})
    with pytest.raises(ConfigError, match=r"efficiency\.prune\.sparsity"):
        load_config(None, ["efficiency.prune.sparsity=1.5"])
    with pytest.raises(ConfigError, match=r"unknown key 'efficiency\.quantize\.bits'"):
        load_config(None, ["efficiency.quantize.bits=4"])


def test_neuron_pruning_removes_whole_units_and_shrinking_is_exact():
    model = _sasrec(ffn_size=64)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = PruneConfig(sparsity=0.5, method="neurons", begin_fraction=0.0, end_fraction=0.0)
    tx = pruning(config, total_steps=10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    pruned = nnx.merge(graphdef, optax.apply_updates(params, updates), rest)
    for block in pruned.blocks:
        up, down = np.asarray(block.feed_forward.up.kernel[...]), np.asarray(block.feed_forward.down.kernel[...])
        dead_up, dead_down = (up == 0).all(0), (down == 0).all(1)
        assert dead_up.sum() == 32 and (dead_up == dead_down).all()
        assert (np.asarray(block.feed_forward.up.bias[...])[dead_up] == 0).all()
    small, widths = shrink_pruned(pruned)
    assert widths == {"blocks/0/feed_forward": [64, 32], "blocks/1/feed_forward": [64, 32]}
    assert small.blocks[0].feed_forward.up.kernel[...].shape == (64, 32)
    batch = _user_batch(np.random.default_rng(5))
    np.testing.assert_allclose(_scores(small, *batch), _scores(pruned, *batch), rtol=1e-5, atol=1e-5)


def test_head_pruning_removes_whole_heads_and_shrinking_is_exact():
    model = _sasrec(hidden_size=64, num_heads=4, ffn_size=64)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = PruneConfig(sparsity=0.5, method="neurons+heads", begin_fraction=0.0, end_fraction=0.0)
    with pytest.raises(ValueError, match="2 or more attention heads"):
        pruning(config, total_steps=10).init(params)
    pruned = nnx.merge(graphdef, _pruned_once(config, params, num_heads=4), rest)
    for block in pruned.blocks:
        qkv = np.asarray(block.attention.qkv.kernel[...]).reshape(64, 3, 4, 16)
        out = np.asarray(block.attention.out.kernel[...]).reshape(4, 16, 64)
        dead = (out == 0).all((1, 2))
        assert dead.sum() == 2  # half of the heads, each whole: its q, k, v columns, bias and out rows
        assert ((qkv == 0).all((0, 3)) == dead[None, :]).all()
        assert (np.asarray(block.attention.qkv.bias[...]).reshape(3, 4, 16)[:, dead] == 0).all()
        assert not (out[~dead] == 0).all((1, 2)).any()
        assert ((np.asarray(block.feed_forward.up.kernel[...]) == 0).all(0)).sum() == 32
    small, widths = shrink_pruned(pruned)
    assert widths == {"blocks/0/attention": [4, 2], "blocks/0/feed_forward": [64, 32],
                      "blocks/1/attention": [4, 2], "blocks/1/feed_forward": [64, 32]}
    assert small.blocks[0].attention.qkv.kernel[...].shape == (64, 96)
    assert small.blocks[0].attention.out.kernel[...].shape == (32, 64)
    assert small.blocks[0].attention.num_heads == 2 and small.blocks[0].attention.head_dim == 16
    batch = _user_batch(np.random.default_rng(6))
    np.testing.assert_allclose(_scores(small, *batch), _scores(pruned, *batch), rtol=1e-5, atol=1e-5)


def test_init_from_starts_at_a_finished_runs_parameters(tmp_path):
    first = ecomjax.train(None, workdir=str(tmp_path / "dense"), train__epochs=1, train__progress=False)
    # a negligible learning rate keeps the start: the same parameters, the same test numbers
    second = ecomjax.train(None, workdir=str(tmp_path / "tuned"), train__epochs=1, train__progress=False,
                           train__init_from=str(tmp_path / "dense"), train__learning_rate=1e-12)
    for a, b in zip(jax.tree.leaves(nnx.state(first.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(second.model, nnx.Param)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-8)
    assert second.metrics["test"]["ndcg@10"] == pytest.approx(first.metrics["test"]["ndcg@10"], abs=1e-6)
    assert first.metrics["test"]["ndcg@10"] > 0.02  # a trained model, not a fresh one
    with pytest.raises(ValueError, match=r"train.init_from=.*blocks.*use the same model section"):
        ecomjax.train(None, workdir=str(tmp_path / "wider"), train__epochs=1, train__progress=False,
                      train__init_from=str(tmp_path / "dense"), model__ffn_size=48)
    with pytest.raises(FileNotFoundError, match=r"train.init_from=.*not a run directory"):
        ecomjax.train(None, workdir=str(tmp_path / "none"), train__init_from=str(tmp_path / "missing"))


def test_recommender_lora_trains_only_adapters_on_a_finished_run_and_merges_exactly(tmp_path):
    from ecomjax.efficiency.lora import LoraConfig, lora_trainable, merge_lora, parameter_counts

    base = ecomjax.train(None, workdir=str(tmp_path / "base"), train__epochs=1, train__progress=False)
    adapted = ecomjax.train(None, workdir=str(tmp_path / "lora"), train__epochs=1, train__progress=False,
                            train__init_from=str(tmp_path / "base"), efficiency__lora__rank=4)
    counts = parameter_counts(adapted.model, lora_trainable())
    assert 0 < counts["fraction"] < 0.1
    frozen = nnx.state(adapted.model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    for a, b in zip(jax.tree.leaves(nnx.state(base.model, nnx.Param)), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the base did not move
    b_matrix = adapted.model.blocks[0].feed_forward.up.kernel_lora_b[...]
    assert float(jnp.max(jnp.abs(b_matrix))) > 0  # the adapters did (they start at B = 0)
    merged = merge_lora(ecomjax.load(tmp_path / "lora").model, base.model, LoraConfig(rank=4, alpha=16.0))
    batch = _user_batch(np.random.default_rng(4), max_len=50)
    np.testing.assert_allclose(_scores(merged, *batch), _scores(adapted.model, *batch), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"set train\.init_from"):
        ecomjax.train(None, workdir=str(tmp_path / "x"), efficiency__lora__rank=4)
    with pytest.raises(ValueError, match="do not combine"):
        ecomjax.train(None, workdir=str(tmp_path / "y"), efficiency__lora__rank=4,
                      train__init_from=str(tmp_path / "base"), efficiency__prune__sparsity=0.5)


def test_training_run_reports_pruning_and_the_quantized_model(tmp_path):
    result = ecomjax.train(None, workdir=str(tmp_path / "run"), train__epochs=3, train__progress=False,
                           efficiency__prune__sparsity=0.5, efficiency__prune__end_fraction=0.5,
                           efficiency__quantize__weights="int8")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pruning"]["overall"] == 0.5
    assert metrics["best_epoch"] >= 2  # epoch 1 ends before the target sparsity holds: not selectable
    params = nnx.state(result.model, nnx.Param)
    assert sparsity_report(params)["per_tensor"]["blocks/0/feed_forward/up/kernel"] == 0.5
    quantized = metrics["quantized"]
    bytes_ = quantized["bytes"]
    assert bytes_["quantized_layers_int8"] <= 0.3 * bytes_["quantized_layers_float"]
    assert abs(quantized["test"]["ndcg@10"] - metrics["test"]["ndcg@10"]) < 0.1 * metrics["test"]["ndcg@10"]
    assert (tmp_path / "run" / "quantized" / "quantized.npz").is_file()
    # served from the saved int8 arrays: the same ranking as the float model, give or take rounding
    from ecomjax.serve.personalize import HistoryPersonalizer

    history = ["3", "17", "42", "8"]
    exact = HistoryPersonalizer(tmp_path / "run").user_scores(history)
    served = HistoryPersonalizer(tmp_path / "run", quantized=True).user_scores(history)
    assert served.shape == exact.shape and np.corrcoef(exact[1:], served[1:])[0, 1] > 0.99
    assert len(set(np.argsort(-exact)[:10]) & set(np.argsort(-served)[:10])) >= 8


# --- LoRA -----------------------------------------------------------------------------------------

def _tiny_bert():
    from ecomjax.models.bert import BertConfig, BertModel

    config = BertConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=16, type_vocab_size=2)
    return BertModel(config, rngs=nnx.Rngs(0))


def _bert_inputs(rng: np.random.Generator, n: int = 4):
    return jnp.asarray(rng.integers(1, 120, size=(n, 10)), jnp.int32), jnp.ones((n, 10), jnp.int32)


def test_quantization_aware_run_exports_int8_and_is_not_resumed_as_a_float_run(tmp_path):
    workdir = str(tmp_path / "qat")
    result = ecomjax.train(None, workdir=workdir, train__epochs=2, train__progress=False,
                           efficiency__quantize__weights="int8", efficiency__quantize__qat=True)
    metrics = result.metrics
    assert abs(metrics["quantized"]["test"]["ndcg@10"] - metrics["test"]["ndcg@10"]) < 0.05 * metrics["test"]["ndcg@10"]

    restored = ecomjax.load(workdir).model
    batch = _user_batch(np.random.default_rng(3))
    np.testing.assert_allclose(restored.encode(*batch), result.model.encode(*batch), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="another config"):
        ecomjax.train(None, workdir=workdir, train__epochs=3, train__progress=False,
                      efficiency__quantize__weights="int8")
    with pytest.raises(ValueError, match=r"set efficiency\.quantize\.weights=int8"):
        ecomjax.train(None, workdir=str(tmp_path / "bad"), efficiency__quantize__qat=True)


def test_recommender_lora_also_train_moves_the_norms_beside_the_adapters_and_merges_exactly(tmp_path):
    from ecomjax.efficiency.lora import LoraConfig, merge_lora

    base = ecomjax.train(None, workdir=str(tmp_path / "base"), train__epochs=1, train__progress=False)
    norms = r".*_norm/(scale|bias)"
    adapted = ecomjax.train(None, workdir=str(tmp_path / "lora"), train__epochs=1, train__progress=False,
                            train__init_from=str(tmp_path / "base"), efficiency__lora__rank=4,
                            efficiency__lora__also_train=norms)
    before = {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(base.model, nnx.Param))}
    after = {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(adapted.model, nnx.Param))}
    moved = {k for k in before if not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))}
    matching = {k for k in before if re.fullmatch(norms, k)}
    assert matching and moved == matching  # every LayerNorm moved; kernels, biases, item table did not
    assert float(jnp.max(jnp.abs(adapted.model.blocks[0].feed_forward.up.kernel_lora_b[...]))) > 0
    merged = merge_lora(ecomjax.load(tmp_path / "lora").model, base.model,
                        LoraConfig(rank=4, alpha=16.0, also_train=norms))
    batch = _user_batch(np.random.default_rng(5), max_len=50)
    np.testing.assert_allclose(_scores(merged, *batch), _scores(adapted.model, *batch), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"also_train '\.\*nrom' matches no parameter path .*blocks/0/"):
        ecomjax.train(None, workdir=str(tmp_path / "typo"), train__init_from=str(tmp_path / "base"),
                      efficiency__lora__rank=4, efficiency__lora__also_train=".*nrom")
    with pytest.raises(ConfigError, match=r"efficiency\.lora\.also_train.*regular expression"):
        ecomjax.train(None, workdir=str(tmp_path / "bad"), efficiency__lora__also_train="(norm")


@pytest.mark.parametrize("quantize_base", [False, True])
def test_lora_starts_at_the_base_model_trains_only_adapters_and_merges_exactly(quantize_base):
    from ecomjax.efficiency.lora import (
        LoraConfig,
        adapter_paths,
        apply_lora,
        lora_trainable,
        merge_lora,
        parameter_counts,
    )

    base = _tiny_bert()
    rng = np.random.default_rng(6)
    ids, mask = _bert_inputs(rng)
    config = LoraConfig(rank=4, alpha=8.0, quantize_base=quantize_base)
    adapted = apply_lora(base, config, ids, mask)
    assert len(adapter_paths(adapted)) == 12  # 2 layers x (query, key, value, attention output, intermediate, output)
    # B starts at zero: the adapted model is the base model (up to the int8 base of QLoRA)
    tolerance = 0.05 if quantize_base else 1e-6
    assert float(jnp.abs(adapted(ids, mask) - base(ids, mask)).max()) < tolerance
    counts = parameter_counts(adapted, lora_trainable())
    assert counts["trainable"] == 12 * 4 * (32 + 32) + 2 * 4 * (64 - 32) * 2  # r (in + out) per layer
    frozen_before = jax.tree.map(jnp.copy, nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
    optimizer = nnx.Optimizer(adapted, optax.adam(1e-2), wrt=lora_trainable())
    target = jnp.asarray(rng.normal(size=(4, 10, 32)), jnp.float32)

    def loss_fn(model):
        return jnp.mean((model(ids, mask) - target) ** 2)

    losses = []
    for _ in range(20):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, lora_trainable()))(adapted)
        optimizer.update(adapted, grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    frozen_after = nnx.state(adapted, nnx.Not(nnx.LoRAParam))
    for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after), strict=True):
        np.testing.assert_array_equal(before, after)  # the base never moves
    merged = merge_lora(adapted, base, config)
    assert not adapter_paths(merged) and isinstance(merged.layers[0].intermediate.kernel, nnx.Param)
    np.testing.assert_allclose(merged(ids, mask), adapted(ids, mask), atol=2e-5)


def test_lora_also_train_moves_norms_biases_and_segments_only_and_merges_exactly():
    from ecomjax.efficiency.lora import (
        BERT_NORMS_BIASES_SEGMENTS,
        LoraConfig,
        apply_lora,
        lora_trainable,
        merge_lora,
        parameter_counts,
    )

    base = _tiny_bert()
    rng = np.random.default_rng(8)
    ids, mask = _bert_inputs(rng)
    types = jnp.asarray(np.arange(10) >= 4, jnp.int32)[None].repeat(4, 0)  # a 4-token "query", then a "title"
    config = LoraConfig(rank=4, alpha=8.0, also_train=BERT_NORMS_BIASES_SEGMENTS)
    adapted = apply_lora(base, config, ids, mask, types)
    trainable = lora_trainable(also_train=config.also_train)
    extra = (2 * 32) * (1 + 2 * 2)  # LayerNorm scale + bias: embeddings, then 2 per layer
    extra += 2 * (4 * 32 + 64 + 32)  # dense biases: query, key, value, attention output, intermediate, output
    extra += 2 * 32  # token-type embeddings
    assert parameter_counts(adapted, trainable)["trainable"] == parameter_counts(adapted, lora_trainable())["trainable"] + extra
    before = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(adapted, nnx.Param))}
    optimizer = nnx.Optimizer(adapted, optax.adam(1e-2), wrt=trainable)
    target = jnp.asarray(rng.normal(size=(4, 10, 32)), jnp.float32)
    for _ in range(5):
        grads = nnx.grad(lambda m: jnp.mean((m(ids, mask, types) - target) ** 2),
                         argnums=nnx.DiffState(0, trainable))(adapted)
        optimizer.update(adapted, grads)
    after = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(adapted, nnx.Param))}
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert {"embeddings/token_type/embedding", "layers/1/output_norm/scale", "layers/0/attention/query/bias",
            "layers/1/intermediate/kernel_lora_b"} <= moved
    assert not any(k.endswith("/kernel") or "word" in k or "position" in k for k in moved)  # the base W stays
    merged = merge_lora(adapted, base, config)
    np.testing.assert_allclose(merged(ids, mask, types), adapted(ids, mask, types), atol=2e-5)
    with pytest.raises(ValueError, match=r"also_train 'nowhere' matches no parameter path \(paths look like"):
        apply_lora(base, LoraConfig(also_train="nowhere"), ids, mask)


def test_lora_errors_name_the_problem():
    from ecomjax.efficiency.lora import LoraConfig, apply_lora

    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match=r"lora also_train '\(norm' is not a regular expression: missing \)"):
        LoraConfig(also_train="(norm")
    ids, mask = _bert_inputs(np.random.default_rng(7))
    with pytest.raises(ValueError, match="match no dense layer"):
        apply_lora(_tiny_bert(), LoraConfig(targets="nowhere"), ids, mask)


def test_dot_kernels_reads_the_int8_path_from_compiled_hlo():
    from ecomjax.bench.kernels import dot_kernels

    def scores(h, w, x):
        int8 = jax.lax.dot_general(h, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        return int8.astype(jnp.float32), x @ x

    compiled = jax.jit(scores).lower(jnp.ones((4, 8), jnp.int8), jnp.ones((16, 8), jnp.int8),
                                     jnp.ones((8, 8))).compile().as_text()
    kernels = dot_kernels(compiled)
    assert sum(kernels.values()) == 2
    assert any(k.startswith("s8 x s8 -> s32") for k in kernels)
    assert any(k.startswith("f32 x f32 -> f32") for k in kernels)


# --- distillation -------------------------------------------------------------------------------

def test_distillation_kl_matches_a_float64_reference_and_masks_padding():
    from ecomjax.efficiency.distill import distillation_kl

    rng = np.random.default_rng(8)
    num_items, rows, temperature = 9, 12, 2.0  # rows 10, 11 pad the table; row 0 is the padding id
    student, teacher = rng.normal(size=(5, rows)) * 3, rng.normal(size=(5, rows)) * 3
    weight = np.array([1, 1, 0, 1, 1], np.float32)

    def log_softmax(x):
        x = x[:, 1:num_items + 1] / temperature
        return x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)

    lt, ls = log_softmax(teacher), log_softmax(student)
    kl = (np.exp(lt) * (lt - ls)).sum(1)
    expected = temperature ** 2 * (kl * weight).sum() / weight.sum()
    got = distillation_kl(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), jnp.asarray(weight),
                          temperature, num_items)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    same = distillation_kl(jnp.asarray(teacher, jnp.float32), jnp.asarray(teacher, jnp.float32), jnp.asarray(weight),
                           temperature, num_items)
    assert abs(float(same)) < 1e-6
    # padding rows and unweighted positions cannot change it
    student[:, [0, 10, 11]] = 50.0
    student[2] = -7.0
    moved = distillation_kl(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), jnp.asarray(weight),
                            temperature, num_items)
    assert float(moved) == pytest.approx(expected, rel=1e-5)


def test_distilled_student_trains_from_a_teacher_run_and_rejects_a_foreign_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    ecomjax.train(None, workdir=str(teacher), train__epochs=2, train__progress=False)
    student = ecomjax.train(None, workdir=str(tmp_path / "student"), train__epochs=2, train__progress=False,
                            model__hidden_size=32, model__num_layers=1, efficiency__distill__teacher=str(teacher),
                            efficiency__distill__weight=0.7)
    assert student.metrics["test"]["ndcg@10"] > 0.03  # popularity-level or better after 2 epochs
    history = [json.loads(line) for line in (tmp_path / "student" / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="it must know the same items"):
        ecomjax.train(None, workdir=str(tmp_path / "other"), train__epochs=1, train__progress=False,
                      data__synthetic__num_items=300, efficiency__distill__teacher=str(teacher))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        ecomjax.train(None, workdir=str(tmp_path / "none"), train__epochs=1, train__progress=False,
                      efficiency__distill__teacher=str(tmp_path / "missing"))


def test_global_magnitude_pruning_ranks_all_targeted_weights_together():
    big = jnp.full((10, 10), 5.0).at[0, 0].set(0.01)  # large weights
    small = jnp.linspace(0.1, 1.0, 100).reshape(10, 10)  # all smaller than big's
    config = PruneConfig(sparsity=0.5, scope="global", begin_fraction=0.0, end_fraction=0.0)
    pruned = _pruned_once(config, {"a": {"kernel": big}, "b": {"kernel": small}})
    report = sparsity_report(pruned)
    assert report["overall"] == 0.5
    # the 100 smallest: the one tiny weight of "a" and 99 of "b"
    assert report["per_tensor"] == {"a/kernel": 0.01, "b/kernel": 0.99}


def test_row_magnitude_pruning_keeps_the_same_share_of_every_row():
    # row norms spread 100x (a popular item and a rare one): per tensor, the short rows go entirely
    table = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8)) * np.logspace(-2, 0, 6)[:, None], jnp.float32)
    params = {"table": {"embedding": table}}
    for scope, zeros_in_shortest_row in (("tensor", 8), ("row", 4)):
        config = PruneConfig(sparsity=0.5, scope=scope, begin_fraction=0.0, end_fraction=0.0)
        pruned = np.asarray(_pruned_once(config, params)["table"]["embedding"])
        assert (pruned == 0).sum() == 24
        assert (pruned[0] == 0).sum() == zeros_in_shortest_row
    assert ((pruned == 0).sum(1) == 4).all()  # row scope: half of each row, the smallest of that row
    kept = np.abs(table) >= np.median(np.abs(table), axis=1, keepdims=True)
    np.testing.assert_array_equal(pruned != 0, kept)


def test_popularity_pruning_shares_a_table_by_training_counts():
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
    params = {"table": {"embedding": table}, "dense": {"kernel": kernel}}
    counts = np.array([0, 80, 15, 3, 0, 0])  # padding id 0, four items, one padding row past them

    def prune(power, fraction=0.5):
        config = PruneConfig(sparsity=fraction, scope="popularity", popularity_power=power,
                             begin_fraction=0.0, end_fraction=0.0)
        return _pruned_once(config, params, row_counts=counts)

    pruned = prune(0.5)
    kept = np.asarray(pruned["table"]["embedding"]) != 0
    # (count + 1) ** 0.5 = 1, 9, 4, 2, 1, 1: 48 kept coordinates shared out in that proportion
    # (floor(3.99 * share), the popular row capped at its 16; the one left over goes to row 0 on a tie)
    np.testing.assert_array_equal(kept.sum(1), [4, 16, 15, 7, 3, 3])
    assert kept.sum() == 48 and sparsity_report(pruned)["per_tensor"] == {"dense/kernel": 0.5, "table/embedding": 0.5}
    # each row keeps its own largest weights
    for row, k in zip(np.abs(np.asarray(table)), kept, strict=True):
        assert k.all() or row[k].min() > row[~k].max()
    # power 0 shares equally: the row scope
    equal = prune(0.0)["table"]["embedding"]
    by_row = _pruned_once(PruneConfig(sparsity=0.5, scope="row", begin_fraction=0.0, end_fraction=0.0), params)
    np.testing.assert_array_equal(np.asarray(equal) != 0, np.asarray(by_row["table"]["embedding"]) != 0)
    with pytest.raises(ValueError, match="needs the items' interaction counts"):
        pruning(PruneConfig(sparsity=0.5, scope="popularity"), 10)
    with pytest.raises(ValueError, match="no targeted parameter has one row per item"):
        pruning(PruneConfig(sparsity=0.5, scope="popularity"), 10, row_counts=np.ones(7)).init(params)
    with pytest.raises(ConfigError, match=r"efficiency\.prune\.popularity_power"):
        load_config(None, ["efficiency.prune.popularity_power=-1"])


def test_popularity_pruning_never_revives_a_pruned_weight_on_the_schedule():
    rng = np.random.default_rng(6)
    params = {"table": {"embedding": jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)}}
    counts = rng.integers(0, 100, size=50)
    config = PruneConfig(sparsity=0.6, scope="popularity", begin_fraction=0.0, end_fraction=0.5, frequency=2)
    tx = optax.chain(optax.adam(0.05), pruning(config, total_steps=40, row_counts=counts))
    state, current, zeros = tx.init(params), params, None
    for _ in range(40):  # a loss pulling every weight to 2.0: a kept zero would move
        grads = jax.tree.map(lambda w: w - 2.0, current)
        updates, state = tx.update(grads, state, current)
        current = optax.apply_updates(current, updates)
        now = np.asarray(current["table"]["embedding"]) == 0
        if zeros is not None:
            assert (now | ~zeros).all()  # once zero, zero
        zeros = now
    assert zeros.mean() >= 0.6 and zeros.mean() < 0.6 + 50 / 400  # the target, give or take one per row


def test_training_with_popularity_pruning_keeps_more_of_popular_items(tmp_path):
    from ecomjax.data import load_sequences
    from ecomjax.data.split import leave_one_out

    result = ecomjax.train(None, workdir=str(tmp_path / "run"), train__epochs=2, train__progress=False,
                           efficiency__prune__sparsity=0.5, efficiency__prune__end_fraction=0.5,
                           efficiency__prune__scope="popularity")
    table = np.asarray(nnx.state(result.model, nnx.Param)["item_embedding"]["ids"]["embedding"][...])
    restored = ecomjax.load(tmp_path / "run")  # the kept model restores without the data
    np.testing.assert_array_equal(np.asarray(nnx.state(restored.model, nnx.Param)["item_embedding"]["ids"]["embedding"][...]),
                                  table)
    split = leave_one_out(load_sequences(restored.config.data))
    counts = split.train_item_counts()
    # training part only: no validation or test target is counted
    assert counts.sum() == sum(len(split.train_sequence(u)) for u in range(len(split.dataset.offsets) - 1))
    every = np.bincount(split.dataset.items, minlength=len(counts))
    targets = np.bincount(np.concatenate([split.valid.targets, split.test.targets]), minlength=len(counts))
    np.testing.assert_array_equal(counts, every - targets)
    kept = (table[1:len(counts)] != 0).sum(1)
    popular, rare = counts[1:] >= np.quantile(counts[1:], 0.9), counts[1:] <= np.quantile(counts[1:], 0.1)
    assert kept[popular].mean() > kept[rare].mean()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pruning"]["overall"] >= 0.5


def test_bi_encoder_distillation_mixes_the_teacher_into_the_target():
    from ecomjax.config import load_config
    from ecomjax.models.towers import BiEncoder
    from ecomjax.tasks.relevance import bi_encoder_loss

    rng = np.random.default_rng(9)
    batch = {"query": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32),
             "product": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32),
             "query_id": jnp.asarray(rng.integers(0, 20, 64)), "product_id": jnp.asarray(rng.integers(0, 30, 64)),
             "relevance": jnp.asarray(rng.uniform(1, 3, 64), jnp.float32)}
    section = load_config({"task": "relevance"}, ["bi_encoder.contrastive_weight=0", "bi_encoder.distill_weight=0.5",
                                                  "bi_encoder.dropout=0"]).bi_encoder
    labels_only = dataclasses.replace(section, distill_weight=0.0)
    model = BiEncoder(16, 8, 0.0, rngs=nnx.Rngs(0))
    key = jax.random.key(0)
    # a teacher that agrees with the labels changes nothing; one that disagrees moves the target halfway
    agreeing = {**batch, "teacher": batch["relevance"]}
    assert float(bi_encoder_loss(model, agreeing, key, section)) == pytest.approx(
        float(bi_encoder_loss(model, batch, key, labels_only)), rel=1e-6)
    shifted = {**batch, "teacher": batch["relevance"] + 1.0}
    halfway = {**batch, "relevance": batch["relevance"] + 0.5}
    assert float(bi_encoder_loss(model, shifted, key, section)) == pytest.approx(
        float(bi_encoder_loss(model, halfway, key, labels_only)), rel=1e-6)


def test_learning_rate_scales_multiply_the_matching_updates_exactly(tmp_path):
    """LoRA+: B's AdamW step is ``ratio`` times A's would-be step; unmatched parameters unchanged;
    a key matching nothing, or a parameter matched twice, is an error."""
    import grain

    from ecomjax.config import ConfigError, RunConfig, TrainConfig, load_config
    from ecomjax.efficiency.lora import LoraConfig, apply_lora, lora_trainable
    from ecomjax.tasks.base import Stage
    from ecomjax.train.loop import Trainer
    from ecomjax.train.optimizer import scale_by_path
    from ecomjax.train.sharding import make_mesh

    params = {"dense": {"kernel_lora_a": jnp.ones((3, 2)), "kernel_lora_b": jnp.ones((2, 3))}}
    grads = jax.tree.map(lambda x: 0.5 * x, params)
    tx = scale_by_path({"_lora_b": 16.0})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["dense"]["kernel_lora_a"], grads["dense"]["kernel_lora_a"])
    np.testing.assert_array_equal(updates["dense"]["kernel_lora_b"], 16.0 * grads["dense"]["kernel_lora_b"])
    with pytest.raises(ValueError, match=r"matches more than one train\.learning_rate_scales key"):
        scale_by_path({"_lora": 2.0, "lora_b": 3.0}).update(grads, optax.EmptyState(), params)
    with pytest.raises(ConfigError, match=r"train.learning_rate_scales: .* out of range; allowed: multipliers > 0"):
        load_config(None, ["train.learning_rate_scales={_lora_b: 0.0}"])

    rng = np.random.default_rng(8)
    ids, mask = _bert_inputs(rng)
    target = np.asarray(rng.normal(size=(4, 10, 32)), np.float32)

    class Adapters(Stage):  # LoRA on a tiny BERT, one batch per epoch
        monitor = "score"

        def __init__(self, train):
            self.train, self.evals = train, 0

        def build(self):
            return apply_lora(_tiny_bert(), LoraConfig(rank=4, alpha=8.0), ids, mask)

        def trainable(self):
            return lora_trainable()

        def batches(self, epoch):
            return grain.MapDataset.range(1).map(lambda _: {"ids": np.asarray(ids), "mask": np.asarray(mask),
                                                            "target": target})

        def loss(self, model, batch, rng):
            return jnp.mean((model(batch["ids"], batch["mask"]) - batch["target"]) ** 2), {}

        def evaluate(self, model, split):
            self.evals += 1
            return {"score": float(self.evals)}

    def fit(ratio, workdir, scales=None):
        # two steps, the first at learning rate 0 (warm-up): B = 0 all along, so A gets no
        # gradient and B's one real step sees the same gradients whatever the ratio
        train = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, warmup_steps=1, weight_decay=0.0,
                            learning_rate_scales=scales or {"_lora_b": ratio}, progress=False)
        config = RunConfig(workdir=str(workdir))
        return Trainer(config, workdir, make_mesh(config.mesh)).fit(Adapters(train)).model

    before = nnx.state(Adapters(None).build(), nnx.LoRAParam)
    moved = {}
    for ratio in (1.0, 16.0):
        after = nnx.state(fit(ratio, tmp_path / str(ratio)), nnx.LoRAParam)
        moved[ratio] = [float(jnp.abs(a - b).max())
                        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(before)[0]]
    for path, plain, plus in zip(paths, moved[1.0], moved[16.0], strict=True):
        if "_lora_b" in path:
            assert plain > 1e-3 and plus == pytest.approx(16.0 * plain, rel=1e-4)
        else:
            assert plain == plus == 0.0
    with pytest.raises(ValueError, match=r"keys \['nowhere'\] match no trained parameter"):
        fit(1.0, tmp_path / "none", scales={"nowhere": 2.0})
