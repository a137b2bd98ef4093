"""Fusion head: every mode's shapes, masking, gate weights, trainability and a learning step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ecomjax.config import _default_rules
from ecomjax.models.axes import LOGICAL_AXES_KEY
from ecomjax.models.bert import BertConfig, BertModel
from ecomjax.models.fusion import (
    FROZEN,
    FUSION_MODES,
    TRAINABLE,
    FusionConfig,
    FusionHead,
    MultimodalEncoder,
    parameter_labels,
    trainability_optimizer,
    trainable_filter,
)
from ecomjax.models.image import EfficientNetLite, Stage

TEXT_DIM, IMAGE_DIM, OUT = 12, 20, 8
TINY_STAGES = (Stage(3, 1, 1, 16, 1), Stage(3, 2, 6, 24, 2))  # 3 MBConv blocks


def tiny_config(fusion: str, **overrides) -> FusionConfig:
    return FusionConfig(fusion=fusion, text_dim=TEXT_DIM, image_dim=IMAGE_DIM, hidden_size=16,
                        mlp_size=24, output_dim=OUT, num_heads=2, dropout=0.1, **overrides)


def random_inputs(seed: int = 0, batch: int = 3, length: int = 5):
    keys = jax.random.split(jax.random.key(seed), 2)
    tokens = jax.random.normal(keys[0], (batch, length, TEXT_DIM))
    feature_map = jax.random.normal(keys[1], (batch, 2, 3, IMAGE_DIM))
    mask = jnp.array([[1] * length, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]][:batch], jnp.int32)
    return tokens, feature_map, mask


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_every_mode_gives_the_common_width_for_pooled_and_unpooled_inputs(fusion):
    head = FusionHead(tiny_config(fusion), rngs=nnx.Rngs(0))
    tokens, feature_map, mask = random_inputs()
    unpooled = head(tokens, feature_map, mask)
    pooled = head(tokens[:, 0], feature_map.mean(axis=(1, 2)))
    positions = head(tokens, feature_map.reshape(3, 6, IMAGE_DIM), mask)
    for out in (unpooled, pooled, positions):
        assert out.shape == (3, OUT) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(unpooled, positions, rtol=1e-5, atol=1e-6)  # map == positions


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_padding_tokens_change_nothing(fusion):
    head = FusionHead(tiny_config(fusion), rngs=nnx.Rngs(1))
    tokens, feature_map, mask = random_inputs()
    base = head(tokens, feature_map, mask)
    # other values in the padded slots, including NaN, and more padding columns appended
    noisy = jnp.where(mask[..., None].astype(bool), tokens, jnp.nan)
    longer = jnp.concatenate([noisy, jnp.full((3, 4, TEXT_DIM), 7.0)], axis=1)
    longer_mask = jnp.concatenate([mask, jnp.zeros((3, 4), jnp.int32)], axis=1)
    np.testing.assert_allclose(head(noisy, feature_map, mask), base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(longer, feature_map, longer_mask), base, rtol=1e-5, atol=1e-6)
    # a row's real tokens matter: dropping its second token changes that row only
    changed = head(tokens, feature_map, mask.at[0, 1].set(0))
    assert np.allclose(changed[1:], base[1:], atol=1e-6)
    assert np.allclose(changed[0], base[0]) == (fusion == "image")  # image-only ignores text


def test_gated_weights_are_a_per_example_distribution_over_modalities():
    head = FusionHead(tiny_config("gated"), rngs=nnx.Rngs(2))
    tokens, feature_map, mask = random_inputs(batch=3)
    weights = head.modality_weights(tokens, feature_map, mask)
    assert weights.shape == (3, 2)
    np.testing.assert_allclose(weights.sum(axis=-1), np.ones(3), rtol=1e-6)
    assert bool(jnp.all(weights > 0)) and not np.allclose(weights[0], weights[1])
    with pytest.raises(ValueError, match="only for fusion='gated'"):
        FusionHead(tiny_config("concat"), rngs=nnx.Rngs(0)).modality_weights(tokens, feature_map)


def test_unknown_fusion_or_backbone_mode_is_an_error():
    with pytest.raises(ValueError, match=r"unknown fusion 'sum'; choose one of \['text'"):
        tiny_config("sum")
    with pytest.raises(ValueError, match="unknown backbone mode 'half'"):
        tiny_config("concat", backbone="half")
    config = tiny_config("concat")
    config.fusion = "mean"  # mutated after validation: the module checks again
    with pytest.raises(ValueError, match="unknown fusion 'mean'"):
        FusionHead(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model\.hidden_size=16 must be divisible by model\.num_heads=5"):
        dataclasses.replace(tiny_config("cross_attention"), num_heads=5)


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_parameters_carry_known_logical_axes(fusion):
    head = FusionHead(tiny_config(fusion), rngs=nnx.Rngs(0))
    rules = _default_rules()
    for path, param in nnx.to_flat_state(nnx.state(head, nnx.Param)):
        names = param.get_metadata().get(LOGICAL_AXES_KEY)
        assert names is not None and len(names) == param.get_value().ndim, path
        assert all(name is None or name in rules for name in names), (path, names)


def test_dropout_is_random_in_training_only():
    head = FusionHead(dataclasses.replace(tiny_config("concat"), dropout=0.5), rngs=nnx.Rngs(0))
    tokens, feature_map, mask = random_inputs()
    np.testing.assert_array_equal(head(tokens, feature_map, mask), head(tokens, feature_map, mask))
    a = head(tokens, feature_map, mask, deterministic=False, rngs=nnx.Rngs(dropout=1))
    b = head(tokens, feature_map, mask, deterministic=False, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_a_jitted_training_step_decreases_the_loss(fusion):
    head = FusionHead(tiny_config(fusion), rngs=nnx.Rngs(0))
    tokens, feature_map, mask = random_inputs(seed=3, batch=3)
    target = jax.random.normal(jax.random.key(4), (3, OUT))
    optimizer = nnx.Optimizer(head, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(model, key):
        out = model(tokens, feature_map, mask, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return jnp.mean((out - target) ** 2)

    @nnx.jit
    def step(model, optimizer, key):
        loss, grads = nnx.value_and_grad(loss_fn)(model, key)
        optimizer.update(model, grads)
        return loss

    eval_loss = nnx.jit(lambda model: jnp.mean((model(tokens, feature_map, mask) - target) ** 2))
    before = float(eval_loss(head))
    for i in range(40):
        step(head, optimizer, jax.random.key(i))
    assert float(eval_loss(head)) < 0.5 * before


# ---------------------------------------------------------------------------- backbones
def tiny_multimodal(fusion: str = "cross_attention") -> MultimodalEncoder:
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=TEXT_DIM, num_layers=3, num_heads=2,
                                intermediate_size=16, max_position_embeddings=8),
                     rngs=nnx.Rngs(0))
    cnn = EfficientNetLite(stages=TINY_STAGES, num_classes=5, rngs=nnx.Rngs(1))
    config = dataclasses.replace(tiny_config(fusion), image_dim=1280, dropout=0.0)
    return MultimodalEncoder(bert, cnn, config, rngs=nnx.Rngs(2))


def backbone_inputs():
    ids = jnp.array([[1, 5, 7, 2, 0, 0], [1, 9, 3, 4, 8, 2]], jnp.int32)
    return ids, (ids > 0).astype(jnp.int32), jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def trainable_paths(model, backbone, blocks=0) -> set[tuple]:
    labels = parameter_labels(model, nnx.state(model, nnx.Param), backbone, blocks)
    return {path for path, label in nnx.to_flat_state(labels) if label.get_value() == TRAINABLE}


def test_trainability_labels_frozen_partial_full():
    model = nnx.eval_shape(tiny_multimodal)  # labels depend on paths only: no arrays needed
    everything = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    head = {p for p in everything if p[0] == "head"}
    classifier = {p for p in everything if p[:2] == ("image_encoder", "classifier")}
    assert trainable_paths(model, "frozen") == head
    assert trainable_paths(model, "partial", 0) == head
    assert trainable_paths(model, "full") == everything - classifier  # unused: never trained

    partial = trainable_paths(model, "partial", 1) - head
    assert {p[:3] for p in partial} == {("text_encoder", "layers", 2),
                                        ("image_encoder", "blocks", 2),
                                        ("image_encoder", "head", "kernel"),
                                        ("image_encoder", "head_norm", "bias"),
                                        ("image_encoder", "head_norm", "scale")}
    partial_two = trainable_paths(model, "partial", 2) - head
    assert {p[2] for p in partial_two if p[1] in ("layers", "blocks")} == {1, 2}
    assert not any(p[1] in ("embeddings", "stem", "stem_norm") for p in partial_two)
    # the filter and the labels agree
    selected = {p for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter(
        model, "partial", 1)))}
    assert selected == trainable_paths(model, "partial", 1)


def flat_values(state) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


def test_partial_backbone_training_moves_only_trainable_weights():
    model = tiny_multimodal()
    ids, mask, images = backbone_inputs()
    target = jnp.ones((2, OUT))
    before = flat_values(nnx.state(model, nnx.Param))
    trainable = trainable_filter(model, "partial", 1)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return jnp.mean((model(ids, mask, images) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
        optimizer.update(model, grads)
        return loss

    step(model, optimizer)
    after = flat_values(nnx.state(model, nnx.Param))
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    assert moved and moved <= trainable_paths(model, "partial", 1)
    assert ("text_encoder", "layers", 2, "output", "kernel") in moved
    assert ("image_encoder", "head", "kernel") in moved


def test_multi_transform_optimizer_zeroes_frozen_updates():
    model = tiny_multimodal("gated")
    ids, mask, images = backbone_inputs()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = trainability_optimizer(optax.adam(1e-2), model, "partial", 1)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(params):
            return jnp.mean(nnx.merge(graphdef, params, rest)(ids, mask, images) ** 2)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new_params, _ = step(params, opt_state)
    before, after = flat_values(params), flat_values(new_params)
    labels = {p: v.get_value() for p, v in nnx.to_flat_state(
        parameter_labels(model, params, "partial", 1))}
    for path, label in labels.items():
        if label == FROZEN:
            np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))
    moved = [p for p in before if not np.array_equal(before[p], after[p])]
    assert moved and all(labels[p] == TRAINABLE for p in moved)
