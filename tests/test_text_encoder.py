"""The JAX MiniLM encoder against sentence-transformers (fixture from
``benchmarks/peers/encoder_reference.py``), plus weight resolution and input checks.

Tests that need the real weights resolve them through ``ecomjax.encoders.weights``; when that
fails they skip locally and fail under CI (as the real-data tests do).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecomjax.encoders import (
    DEFAULT_TEXT_CHECKPOINT,
    CheckpointNotFoundError,
    TextEncoder,
    WeightsPackage,
    resolve_checkpoint,
)
from ecomjax.encoders import weights as weights_module
from ecomjax.encoders.text import check_texts
from ecomjax.models.axes import LOGICAL_AXES_KEY
from ecomjax.models.bert import BertConfig, BertModel, load_hf_weights

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
PARITY_ATOL = 1e-4  # the bound on |ecomjax - sentence-transformers|
TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
                  max_position_embeddings=32)


def _checkpoint() -> Path:
    try:
        return resolve_checkpoint(DEFAULT_TEXT_CHECKPOINT)
    except CheckpointNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def sentences(reference) -> list[str]:
    return [str(s) for s in reference["sentences"]]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_pretrained(_checkpoint())


def test_fixture_covers_the_cases(reference, sentences):
    assert len(sentences) >= 24
    assert reference["embeddings"].shape == (len(sentences), 384)
    assert min(len(s.split()) for s in sentences) == 1  # a one-word query
    assert reference["token_lengths"].max() == 256  # the long text is truncated


def test_embeddings_match_sentence_transformers(encoder, reference, sentences):
    ours = encoder.encode(sentences)
    assert ours.dtype == np.float32 and ours.shape == reference["embeddings"].shape
    diff = np.abs(ours - reference["embeddings"]).max()
    assert diff <= PARITY_ATOL, f"max abs diff {diff:.2e} over {len(sentences)} sentences"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # Normalize module


def test_several_batches_give_the_same_embeddings(encoder, reference, sentences):
    ours = encoder.encode(sentences, batch_size=5)  # 6 batches, a ragged last one
    assert np.abs(ours - reference["embeddings"]).max() <= PARITY_ATOL


def test_tokenization_matches(encoder, reference, sentences):
    ours = encoder.tokenize(sentences)
    for row, index in enumerate(reference["token_sentence_index"]):
        length = reference["token_lengths"][row]
        assert ours[index] == reference["token_ids"][row, :length].tolist(), sentences[index]
    longest = max(ours, key=len)
    assert len(longest) == encoder.head.max_length == 256 and longest[-1] == 102  # [SEP] kept


def test_padding_inside_a_batch_changes_nothing(encoder, sentences):
    short = "drill"
    longer = [s for s in sentences if len(s) > 60][:3]
    alone = encoder.encode([short])[0]
    in_batch = encoder.encode([*longer, short])[-1]
    np.testing.assert_allclose(in_batch, alone, atol=1e-6)


def test_bfloat16_stays_close(reference, sentences):
    encoder = TextEncoder.from_pretrained(_checkpoint(), dtype="bfloat16")
    assert encoder.model.embeddings.word.embedding.get_value().dtype == jnp.float32
    ours = encoder.encode(sentences)
    ref = reference["embeddings"]
    cosine = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() > 0.99, cosine.min()


def test_bad_input_is_named(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        encoder.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["ok"], batch_size=0)


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ([], ValueError, "empty"),
        ("one string", TypeError, "not one string"),
        (["ok", None], TypeError, r"texts\[1\] is NoneType"),
        ([b"bytes"], TypeError, r"texts\[0\] is bytes"),
        ({"a": 1}, TypeError, "got dict"),
    ],
)
def test_check_texts(texts, error, match):
    with pytest.raises(error, match=match):
        check_texts(texts)


def test_parameters_carry_logical_axes():
    model = nnx.eval_shape(lambda: BertModel(TINY, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    seen = set()
    for _, variable in nnx.to_flat_state(params):
        names = variable.get_metadata().get(LOGICAL_AXES_KEY)
        assert names is not None and len(names) == len(variable.get_value().shape)
        seen.update(n for n in names if n)
    assert seen == {"vocab", "positions", "embed", "heads", "mlp", "norm"}


def test_loader_rejects_a_mismatched_state_dict():
    model = nnx.eval_shape(lambda: BertModel(TINY, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="missing"):
        load_hf_weights(model, {"embeddings.word_embeddings.weight": np.zeros((50, 16))})


def test_resolve_names_every_attempt(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointNotFoundError, match="missing"):
        resolve_checkpoint(tmp_path)  # a directory without the files
    with pytest.raises(CheckpointNotFoundError, match="Hugging Face cache no-such/model"):
        resolve_checkpoint("no-such/model", download=False)


def test_resolve_directory_and_cache(tmp_path, monkeypatch):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / "ckpt" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "ckpt" / name).write_text("{}")
    assert resolve_checkpoint(tmp_path / "ckpt") == (tmp_path / "ckpt").resolve()

    # A package that is not installed but was unzipped into the cache by an earlier download.
    package = WeightsPackage(distribution="ecomjax-test-weights", module="ecomjax_test_weights")
    monkeypatch.setattr(weights_module, "KNOWN_PACKAGES", (package,))
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CheckpointNotFoundError, match="not installed") as error:
        resolve_checkpoint("ecomjax-test-weights", download=False)
    assert "download=False" in str(error.value)
    cached = tmp_path / "cache" / "packages" / "ecomjax-test-weights" / "ecomjax_test_weights"
    (cached / "model").parent.mkdir(parents=True)
    (tmp_path / "ckpt").rename(cached / "model")
    assert resolve_checkpoint("ecomjax_test_weights", download=False) == (cached / "model").resolve()
