import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecomjax.models.sequential import SequentialModelConfig, build_sequential_model
from ecomjax.tasks.next_item_losses import LossConfig, item_log_prior, next_item_loss

NUM_ITEMS, MAX_LEN = 30, 8


def make(name, **kw):
    config = SequentialModelConfig(name=name, hidden_size=16, num_heads=2, ffn_size=32, num_layers=2, **kw)
    return build_sequential_model(config, NUM_ITEMS, MAX_LEN, rngs=nnx.Rngs(0))


def encode_alone(model, seq):
    """Right-aligned single sequence, as evaluation feeds it."""
    items = np.zeros((1, MAX_LEN), np.int32)
    items[0, MAX_LEN - len(seq):] = seq
    seg = (items > 0).astype(np.int32)
    pos = (MAX_LEN - 1 - np.arange(MAX_LEN))[None] * seg
    return model.encode(jnp.asarray(items), jnp.asarray(pos), jnp.asarray(seg))[0, MAX_LEN - len(seq):]


@pytest.mark.parametrize("name,extra", [("sasrec", {}), ("sasrec", {"norm_first": False}),
                                        ("gru4rec", {}), ("gru4rec", {"rnn_cell": "lstm"})])
def test_packed_row_equals_sequences_encoded_alone(name, extra):
    model = make(name, **extra)
    a, b = [3, 5, 7], [11, 2, 9, 4]
    items = np.array([a + b + [0]], np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32)
    pos = np.array([[2, 1, 0, 3, 2, 1, 0, 0]], np.int32)
    packed = model.encode(jnp.asarray(items), jnp.asarray(pos), jnp.asarray(seg))[0]
    np.testing.assert_allclose(packed[:3], encode_alone(model, a), atol=1e-5)
    np.testing.assert_allclose(packed[3:7], encode_alone(model, b), atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_future_items_do_not_change_the_past(name):
    model = make(name)
    seg = jnp.ones((1, MAX_LEN), jnp.int32)
    pos = jnp.arange(MAX_LEN - 1, -1, -1)[None]
    x1 = jnp.arange(1, MAX_LEN + 1)[None]
    x2 = x1.at[0, 5:].set(20)
    h1, h2 = model.encode(x1, pos, seg), model.encode(x2, pos, seg)
    np.testing.assert_allclose(h1[0, :5], h2[0, :5], atol=1e-6)
    assert not np.allclose(h1[0, 5:], h2[0, 5:])


def test_dropout_is_active_only_in_training():
    model = make("sasrec")
    x = jnp.arange(1, MAX_LEN + 1)[None]
    seg, pos = jnp.ones_like(x), jnp.arange(MAX_LEN - 1, -1, -1)[None]
    a = model.encode(x, pos, seg, deterministic=False, rngs=nnx.Rngs(dropout=1))
    b = model.encode(x, pos, seg, deterministic=False, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.encode(x, pos, seg), model.encode(x, pos, seg))


def test_bfloat16_compute_keeps_float32_params():
    model = make("sasrec", compute_dtype="bfloat16")
    params = nnx.state(model, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    x = jnp.arange(1, MAX_LEN + 1)[None]
    h = model.encode(x, jnp.arange(MAX_LEN - 1, -1, -1)[None], jnp.ones_like(x))
    assert h.dtype == jnp.bfloat16


def _loss_inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(2, 5, 8)).astype(np.float32)
    table = rng.normal(size=(NUM_ITEMS + 1, 8)).astype(np.float32)
    targets = rng.integers(1, NUM_ITEMS + 1, size=(2, 5)).astype(np.int32)
    targets[1, 3:] = 0  # padding
    return hidden, table, targets


def test_full_softmax_matches_float64_reference():
    hidden, table, targets = _loss_inputs()
    loss, count = next_item_loss(jnp.asarray(hidden), jnp.asarray(targets), jnp.asarray(table),
                                 LossConfig(), jax.random.key(0), jnp.zeros(NUM_ITEMS + 1))
    logits = hidden.reshape(-1, 8).astype(np.float64) @ table.T.astype(np.float64)
    logits[:, 0] = -np.inf
    t = targets.reshape(-1)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    ref = (lse - logits[np.arange(len(t)), t])[t > 0].mean()
    assert int(count) == 8
    assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_sampled_softmax_with_logq_matches_reference():
    hidden, table, targets = _loss_inputs(1)
    counts = np.arange(NUM_ITEMS + 1) + 1
    log_q = item_log_prior(counts, "popularity")
    config = LossConfig(name="sampled_softmax", num_negatives=7, sampler="popularity")
    key = jax.random.key(3)
    loss, _ = next_item_loss(jnp.asarray(hidden), jnp.asarray(targets), jnp.asarray(table), config, key, jnp.asarray(log_q))
    negatives = np.asarray(jax.random.categorical(key, jnp.asarray(log_q), shape=(7,)))
    h, t = hidden.reshape(-1, 8).astype(np.float64), targets.reshape(-1)
    h, t = h[t > 0], t[t > 0]
    pos = (h * table[t]).sum(1) - log_q[t]
    neg = h @ table[negatives].T - log_q[negatives][None]
    neg[negatives[None, :] == t[:, None]] = -np.inf
    allv = np.concatenate([pos[:, None], neg], 1)
    ref = (np.log(np.exp(allv).sum(1)) - pos).mean()
    assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_bce_negative_never_equals_target_and_loss_is_finite():
    hidden, table, targets = _loss_inputs(2)
    config = LossConfig(name="bce")
    loss, count = next_item_loss(jnp.asarray(hidden), jnp.asarray(targets), jnp.asarray(table), config,
                                 jax.random.key(0), jnp.zeros(NUM_ITEMS + 1))
    assert np.isfinite(float(loss)) and int(count) == 8
    draw = jax.random.randint(jax.random.key(0), (10000,), 1, NUM_ITEMS)
    t = jnp.full((10000,), 5)
    negatives = draw + (draw >= t)
    assert int((negatives == 5).sum()) == 0 and int(negatives.min()) >= 1 and int(negatives.max()) == NUM_ITEMS


def test_uniform_log_prior_excludes_padding():
    lp = item_log_prior(np.array([0, 5, 1, 0]), "uniform")
    assert lp[0] == -np.inf and np.allclose(np.exp(lp[1:]), 1 / 3)


def test_chunked_softmax_matches_direct_form_in_value_and_gradient():
    from ecomjax.tasks.next_item_losses import chunked_softmax_xent

    rng = np.random.default_rng(7)
    hidden = jnp.asarray(rng.normal(size=(24, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(NUM_ITEMS + 1, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, NUM_ITEMS + 1, size=24))
    weights = jnp.asarray(rng.random(24), jnp.float32)

    def direct(h, e):
        logits = (h @ e.T).at[:, 0].set(-jnp.inf)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
        return jnp.sum(nll * weights)

    def chunked(h, e):
        return jnp.sum(chunked_softmax_xent(h, e, targets, 8, NUM_ITEMS) * weights)

    (v1, g1), (v2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(hidden, table) for f in (direct, chunked))
    assert float(v2) == pytest.approx(float(v1), rel=1e-6)
    np.testing.assert_allclose(g2[0], g1[0], atol=1e-5)
    np.testing.assert_allclose(g2[1], g1[1], atol=1e-5)
    assert float(jnp.abs(g2[1][0]).max()) == 0.0  # the padding row gets no gradient


@pytest.mark.parametrize("name", ["full_softmax", "sampled_softmax", "bce"])
def test_table_padding_rows_change_nothing(name):
    """Item tables are padded to a multiple of 128 rows so they shard evenly; the extra rows must
    never be scored: same loss as the unpadded table, and no gradient reaches them."""
    hidden, table, targets = _loss_inputs(4)
    padded = np.concatenate([table, np.random.default_rng(0).normal(size=(9, 8)).astype(np.float32) * 50])
    config = LossConfig(name=name, num_negatives=5)
    prior = jnp.zeros(NUM_ITEMS + 1)

    def loss_of(t, num_items):
        return next_item_loss(jnp.asarray(hidden), jnp.asarray(targets), t, config, jax.random.key(1), prior,
                              num_items)[0]

    plain = loss_of(jnp.asarray(table), None)
    value, grad = jax.value_and_grad(loss_of)(jnp.asarray(padded), NUM_ITEMS)
    assert float(value) == pytest.approx(float(plain), rel=1e-6)
    assert float(jnp.abs(grad[NUM_ITEMS + 1 :]).max()) == 0.0


def test_item_table_is_padded_with_zero_rows_and_real_rows_match_unpadded_init():
    from ecomjax.models.axes import padded_vocab, zero_padded_rows

    model = make("sasrec")
    table = np.asarray(model.item_table())
    assert table.shape[0] == padded_vocab(NUM_ITEMS + 1) and table.shape[0] % 128 == 0
    assert model.num_items == NUM_ITEMS
    assert not table[NUM_ITEMS + 1 :].any()
    init = nnx.initializers.truncated_normal(stddev=0.02)
    key = jax.random.key(0)
    np.testing.assert_array_equal(zero_padded_rows(init, 5)(key, (8, 3))[:5], init(key, (5, 3)))
