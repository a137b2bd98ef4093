"""Any BERT-layout Hugging Face checkpoint, not only all-MiniLM-L6-v2: tiny random checkpoints in
other shapes and layouts (written by ``tests/tiny_bert.py``), against references that share no
code with ecomjax.

transformers 5 has no Flax model and torch is not installed, so the network's reference is a
float64 numpy BERT forward written below from the published architecture (embeddings + LayerNorm,
masked softmax attention, GELU FFN, post-LN, then the sentence head). The tokenizer's reference is
transformers' ``BertTokenizer`` (PyTorch-free, backed by ``tokenizers``) built from the same
``vocab.txt`` and ``tokenizer_config.json``. The hub download is exercised with huggingface_hub's
calls replaced by stand-ins that copy from a local checkpoint, so nothing reaches the network.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import shutil
import socket
import sys
import time
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf
from tiny_bert import HIDDEN, LAYERS, VOCAB, Variant, random_tensors, write_checkpoint

from ecomjax.encoders import CheckpointNotFoundError, TextEncoder, resolve_checkpoint
from ecomjax.encoders import weights as weights_module
from ecomjax.encoders.text import load_tokenizer
from ecomjax.errors import InputError

PARITY_ATOL = 1e-5  # float32 network against the float64 reference
TEXTS = [
    "cordless drill",
    "Black leather boots for men, size 10",
    "Café résumé naïve fiancé",  # accents: stripped when lowercasing
    "UPPER CASE WATERPROOF JACKET",
    "zyxwvq floobergast",  # words not in the vocabulary: single-letter pieces
    "garden hose 50 ft & brass nozzle (green)",
    "手机 case",  # CJK characters split one by one, unknown
    "a",
    "the best soft cotton shirt with long sleeves for kids and women in red blue and green",
    "a [MASK] lamp",  # a special token written in the text
]


# ----------------------------------------------------------------------------- checkpoints
VARIANTS = {
    # all-MiniLM-style: sentence-transformers files, mean + Normalize, tokenizer.json and vocab.txt
    "mean-normalize": Variant("mean-normalize"),
    # bge-style: [CLS] pooling + Normalize, a pooler in the weights, only vocab.txt
    "cls-vocab-only": Variant("cls-vocab-only", tokenizer="vocab", pooling="cls", pooler=True),
    # a bare BertModel folder (no sentence files: mean, unnormalised), 3 heads of 32, tanh GELU
    "bare-gelu-new": Variant("bare-gelu-new", tokenizer="json", pooling=None, normalize=False,
                             heads=3, hidden_act="gelu_new", layer_norm_eps=1e-6, pooler=True),
    # a cased vocabulary, ReLU, saved from a task model
    "cased-relu-prefixed": Variant("cased-relu-prefixed", tokenizer="vocab", pooling="mean",
                                   normalize=False, prefix="bert.", hidden_act="relu",
                                   lowercase=False),
}


# ----------------------------------------------------------------------------- references
def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_ACTS = {
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0.0),
}


def reference_states(tensors: dict[str, np.ndarray], variant: Variant,
                     token_ids: list[list[int]]) -> list[np.ndarray]:
    """float64 last-layer states ``[n_tokens, hidden]`` per text, one text at a time (so no
    padding at all), from the state dict. Written from BERT's definition, independently of
    ``ecomjax.models.bert``."""
    t = {name.removeprefix(variant.prefix): value.astype(np.float64)
         for name, value in tensors.items()}
    eps, heads, act = variant.layer_norm_eps, variant.heads, _ACTS[variant.hidden_act]
    out = []
    for ids in token_ids:
        ids = np.asarray(ids)
        n, d = len(ids), HIDDEN // heads
        x = (t["embeddings.word_embeddings.weight"][ids]
             + t["embeddings.position_embeddings.weight"][:n]
             + t["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def linear(v, name, p=p):
                return v @ t[f"{p}{name}.weight"].T + t[f"{p}{name}.bias"]

            q, k, v = (linear(x, f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = linear(context.transpose(1, 0, 2).reshape(n, HIDDEN), "attention.output.dense")
            x = _layer_norm(x + attended, t[f"{p}attention.output.LayerNorm.weight"],
                            t[f"{p}attention.output.LayerNorm.bias"], eps)
            inner = linear(act(linear(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(x + inner, t[f"{p}output.LayerNorm.weight"],
                            t[f"{p}output.LayerNorm.bias"], eps)
        out.append(x)
    return out


def reference_embeddings(tensors: dict[str, np.ndarray], variant: Variant,
                         token_ids: list[list[int]]) -> np.ndarray:
    """The sentence head on the reference states: [CLS] or mean pooling, then L2 if asked."""
    out = []
    for x in reference_states(tensors, variant, token_ids):
        pooled = x[0] if variant.pooling == "cls" else x.mean(0)
        if variant.normalize:
            pooled = pooled / np.linalg.norm(pooled)
        out.append(pooled)
    return np.stack(out)


@pytest.fixture(scope="module")
def transformers_tokenizer():
    """transformers' PyTorch-free ``BertTokenizer.from_pretrained`` on a checkpoint folder."""
    transformers = pytest.importorskip("transformers")

    def load(directory: Path):
        return transformers.BertTokenizer.from_pretrained(str(directory))

    return load


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-bert")
    return {name: write_checkpoint(root / name, variant, seed=i)
            for i, (name, variant) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module")
def encoders(checkpoints) -> dict[str, TextEncoder]:
    return {name: TextEncoder.from_pretrained(path) for name, path in checkpoints.items()}


def _reference_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _saved_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", list(VARIANTS))
def test_tokens_match_transformers(name, checkpoints, encoders, transformers_tokenizer):
    """Word pieces as transformers' BertTokenizer makes them from vocab.txt + tokenizer_config:
    accents, upper case, unknown words, CJK, a literal [MASK], truncation keeping [SEP]."""
    encoder, variant = encoders[name], VARIANTS[name]
    reference = transformers_tokenizer(_vocab_only_copy(checkpoints[name]))
    long_text = " ".join(["waterproof leather boots"] * 40)
    texts = [*TEXTS, long_text]
    ours = encoder.tokenize(texts)
    assert ours == _reference_ids(reference, texts, encoder.head.max_length)
    assert len(ours[-1]) == encoder.head.max_length and ours[-1][-1] == VOCAB.index("[SEP]")
    assert VOCAB.index("[UNK]") in ours[TEXTS.index("手机 case")]
    assert VOCAB.index("[MASK]") in ours[TEXTS.index("a [MASK] lamp")]
    cafe = ours[TEXTS.index("Café résumé naïve fiancé")]
    assert (VOCAB.index("cafe") in cafe) == variant.lowercase  # accents go with lowercasing
    pairs = load_tokenizer(checkpoints[name], 32).encode_batch([("cordless drill", "Drill bits")])
    expected = reference("cordless drill", "Drill bits", truncation=True, max_length=32)
    assert pairs[0].ids == expected["input_ids"] and pairs[0].type_ids == expected["token_type_ids"]


def _vocab_only_copy(directory: Path) -> Path:
    """The checkpoint's vocab.txt and tokenizer_config.json alone, so that transformers builds its
    tokenizer from them (not from the tokenizer.json under test)."""
    copy = directory.parent / f"{directory.name}-vocab"
    if not copy.exists():
        copy.mkdir()
        (copy / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
        shutil.copy(directory / "tokenizer_config.json", copy / "tokenizer_config.json")
    return copy


@pytest.mark.parametrize("name", list(VARIANTS))
def test_embeddings_match_the_float64_reference(name, checkpoints, encoders):
    """A padded batch of different lengths, and each text alone, against the unpadded float64
    forward of the same state dict with the head its files describe."""
    encoder, variant = encoders[name], VARIANTS[name]
    assert encoder.dim == HIDDEN and encoder.head.pooling == (variant.pooling or "mean")
    assert encoder.head.normalize == variant.normalize
    reference = reference_embeddings(_saved_tensors(checkpoints[name]), variant,
                                     encoder.tokenize(TEXTS))
    batched = encoder.encode(TEXTS, batch_size=4)  # ragged last batch, padding in every batch
    alone = np.concatenate([encoder.encode([text]) for text in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), HIDDEN)
    for ours in (batched, alone):
        diff = np.abs(ours - reference).max()
        assert diff <= PARITY_ATOL, f"{name}: max abs diff {diff:.2e}"
    # the reference is not trivially close: the head and the weights both matter
    assert np.abs(reference[0] - reference[1]).max() > 100 * PARITY_ATOL
    if variant.normalize:
        np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_token_states_match_the_reference(checkpoints, encoders):
    """The unpooled states (what fusion reads) of a bare checkpoint, padded to the longest text."""
    name = "bare-gelu-new"
    encoder = encoders[name]
    token_ids = encoder.tokenize(TEXTS)
    states, mask = encoder.token_states(TEXTS, batch_size=4)
    expected = reference_states(_saved_tensors(checkpoints[name]), VARIANTS[name], token_ids)
    assert states.shape == (len(TEXTS), max(map(len, token_ids)), HIDDEN)
    for row, reference in enumerate(expected):
        assert mask[row].sum() == len(reference)
        assert np.abs(states[row, :len(reference)] - reference).max() <= PARITY_ATOL
        assert not states[row, len(reference):].any()


def test_pooling_override_for_a_folder_without_sentence_files(checkpoints):
    """A bare BertModel folder of a CLS model (bge without its sentence-transformers files)."""
    encoder = TextEncoder.from_pretrained(checkpoints["bare-gelu-new"], pooling="cls", normalize=True)
    variant = Variant("override", pooling="cls", normalize=True, heads=3, hidden_act="gelu_new",
                      layer_norm_eps=1e-6)
    reference = reference_embeddings(_saved_tensors(checkpoints["bare-gelu-new"]), variant,
                                     encoder.tokenize(TEXTS))
    assert np.abs(encoder.encode(TEXTS) - reference).max() <= PARITY_ATOL
    with pytest.raises(InputError, match="pooling must be"):
        TextEncoder.from_pretrained(checkpoints["bare-gelu-new"], pooling="max")


# ----------------------------------------------------------------------------- layouts
def test_prefixed_and_task_model_names_load_identically(tmp_path, encoders):
    """BertForMaskedLM (``bert.`` + ``cls.``) and BertForSequenceClassification (``bert.`` +
    ``classifier.``) saves of the same encoder give the very same embeddings."""
    variant = VARIANTS["mean-normalize"]
    plain = encoders["mean-normalize"].encode(TEXTS)
    base = random_tensors(0)
    heads = {"masked-lm": {"cls.predictions.bias": np.zeros(len(VOCAB), np.float32),
                           "cls.predictions.decoder.weight": np.ones((len(VOCAB), HIDDEN), np.float32)},
             "classifier": {"classifier.weight": np.ones((3, HIDDEN), np.float32),
                            "classifier.bias": np.zeros(3, np.float32),
                            "bert.pooler.dense.weight": np.eye(HIDDEN, dtype=np.float32),
                            "bert.pooler.dense.bias": np.zeros(HIDDEN, np.float32)}}
    for name, head in heads.items():
        tensors = {f"bert.{k}": v for k, v in base.items()} | head
        directory = write_checkpoint(tmp_path / name, variant, tensors=tensors)
        np.testing.assert_array_equal(TextEncoder.from_pretrained(directory).encode(TEXTS), plain)


def test_old_layer_norm_names_load_identically(tmp_path, encoders):
    """Checkpoints converted from the TF originals call LayerNorm's parameters gamma and beta."""
    tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in random_tensors(0).items()}
    directory = write_checkpoint(tmp_path / "gamma", VARIANTS["mean-normalize"], tensors=tensors)
    np.testing.assert_array_equal(TextEncoder.from_pretrained(directory).encode(TEXTS),
                                  encoders["mean-normalize"].encode(TEXTS))


def _stand_in(module: str, name: str):
    def function(*args):
        raise AssertionError("only ever pickled")

    function.__module__, function.__name__, function.__qualname__ = module, name, name
    return function


_REBUILD = _stand_in("torch._utils", "_rebuild_tensor_v2")
_FLOAT_STORAGE = type("FloatStorage", (), {"__module__": "torch"})


@contextlib.contextmanager
def _fake_torch():
    """Throw-away ``torch`` modules, so that pickle writes the globals a torch save names."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = _FLOAT_STORAGE, _REBUILD, utils
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_torch_state_dict(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """``torch.save(state_dict)`` in the zip layout, written without torch."""

    @dataclass(eq=False)
    class Storage:
        key: str
        data: np.ndarray

    class Tensor:
        def __init__(self, storage: Storage, shape: tuple[int, ...]):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            strides = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return _REBUILD, (self.storage, 0, self.shape, strides, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", _FLOAT_STORAGE, obj.key, "cpu", obj.data.size)
            return None

    state, storages = collections.OrderedDict(), []
    for i, (name, value) in enumerate(tensors.items()):
        storage = Storage(str(i), np.ascontiguousarray(value, dtype=np.float32).ravel())
        storages.append(storage)
        state[name] = Tensor(storage, tuple(value.shape))
    buffer = io.BytesIO()
    with _fake_torch():
        Pickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())


def test_pytorch_model_bin_only_checkpoint_loads_identically(tmp_path, checkpoints, encoders):
    """An older repository with ``pytorch_model.bin`` and ``vocab.txt`` only (no safetensors,
    no tokenizer.json), read by the torch-free unpickler."""
    source = checkpoints["cls-vocab-only"]
    directory = tmp_path / "bin-only"
    shutil.copytree(source, directory)
    (directory / "model.safetensors").unlink()
    write_torch_state_dict(directory / "pytorch_model.bin", _saved_tensors(source))
    assert resolve_checkpoint(directory) == directory.resolve()
    np.testing.assert_array_equal(TextEncoder.from_pretrained(directory).encode(TEXTS),
                                  encoders["cls-vocab-only"].encode(TEXTS))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"position_embedding_type": "relative_key"}, "config.json: position_embedding_type 'relative_key'"),
        ({"position_embedding_type": "rotary"}, "config.json: position_embedding_type"),
        ({"num_attention_heads": 5}, "config.json: hidden_size 96 is not divisible by num_attention_heads 5"),
        ({"hidden_act": "tanh"}, "config.json: hidden_act 'tanh' is not one of"),
        ({"is_decoder": True}, "config.json: is_decoder is true"),
        ({"model_type": "roberta"}, "config.json: model_type 'roberta'"),
        ({"layer_norm_eps": -1}, "config.json: layer_norm_eps"),
        ({"num_hidden_layers": "3"}, "config.json: num_hidden_layers must be a positive integer"),
    ],
)
def test_unsupported_config_names_the_file_and_key(tmp_path, override, match):
    variant = Variant("bad", extra=override)
    directory = write_checkpoint(tmp_path / "bad", variant, tensors=random_tensors(0))
    with pytest.raises(InputError, match=match) as caught:
        TextEncoder.from_pretrained(directory)
    assert str(directory / "config.json") in str(caught.value)


def test_config_without_a_shape_key_names_it(tmp_path):
    directory = write_checkpoint(tmp_path / "bad", VARIANTS["mean-normalize"], tensors=random_tensors(0))
    config = json.loads((directory / "config.json").read_text())
    del config["intermediate_size"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json: missing \['intermediate_size'\]"):
        TextEncoder.from_pretrained(directory)


def test_missing_or_misshapen_weight_names_the_tensor(tmp_path):
    variant = VARIANTS["mean-normalize"]
    tensors = random_tensors(0)
    del tensors["encoder.layer.2.output.dense.bias"]
    directory = write_checkpoint(tmp_path / "missing", variant, tensors=tensors)
    with pytest.raises(InputError, match=r"missing \['encoder.layer.2.output.dense.bias'\]") as caught:
        TextEncoder.from_pretrained(directory)
    assert str(directory / "model.safetensors") in str(caught.value)

    tensors = random_tensors(0)
    tensors["encoder.layer.1.intermediate.dense.weight"] = np.zeros((HIDDEN, HIDDEN), np.float32)
    directory = write_checkpoint(tmp_path / "misshapen", variant, tensors=tensors)
    with pytest.raises(InputError, match=r"encoder.layer.1.intermediate.dense.weight has shape \(96, 96\)"):
        TextEncoder.from_pretrained(directory)

    tensors = random_tensors(0) | {"encoder.layer.0.attention.self.rotary.weight": np.zeros(4, np.float32)}
    directory = write_checkpoint(tmp_path / "stray", variant, tensors=tensors)
    with pytest.raises(InputError, match=r"unexpected \['encoder.layer.0.attention.self.rotary.weight'\]"):
        TextEncoder.from_pretrained(directory)


def test_unsupported_sentence_module_is_named(tmp_path):
    directory = write_checkpoint(tmp_path / "dense", VARIANTS["mean-normalize"])
    modules = json.loads((directory / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (directory / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InputError, match=r"modules.json: module type 'sentence_transformers.models.Dense'"):
        TextEncoder.from_pretrained(directory)


def test_checkpoint_files_accept_either_tokenizer_and_either_weights(tmp_path, checkpoints):
    directory = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoints["mean-normalize"], directory)
    (directory / "tokenizer.json").unlink()
    assert resolve_checkpoint(directory) == directory.resolve()  # vocab.txt is enough
    (directory / "vocab.txt").unlink()
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError) as caught:
        resolve_checkpoint(directory)
    message = str(caught.value)
    assert "model.safetensors or pytorch_model.bin" in message and "tokenizer.json or vocab.txt" in message


# ----------------------------------------------------------------------------- hub download
@pytest.fixture
def hub(tmp_path, monkeypatch, checkpoints):
    """huggingface_hub's model listing and snapshot download replaced by stand-ins serving the
    bge-style tiny checkpoint as ``tiny-org/tiny-bge``, plus files a real repository also holds."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "ecomjax-cache"))
    source = checkpoints["cls-vocab-only"]
    repo_files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    repo_files += ["README.md", "pytorch_model.bin", "onnx/model.onnx", "onnx/tokenizer.json"]
    calls = types.SimpleNamespace(info=[], download=[], local=[])

    def model_info(self, repo_id, *, timeout=None, **kwargs):
        calls.info.append((repo_id, timeout))
        if repo_id != "tiny-org/tiny-bge":
            raise OSError("[Errno -2] Name or service not known")
        return types.SimpleNamespace(sha="0" * 40,
                                     siblings=[types.SimpleNamespace(rfilename=f) for f in repo_files])

    def snapshot_download(repo_id, *, allow_patterns=None, local_files_only=False, **kwargs):
        if local_files_only:
            calls.local.append(repo_id)
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        calls.download.append((repo_id, list(allow_patterns), kwargs))
        snapshot = tmp_path / "hf-cache" / repo_id.replace("/", "--")
        for name in allow_patterns:
            if (source / name).is_file():
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_id_not_in_the_cache_is_downloaded(hub, encoders):
    encoder = TextEncoder.from_pretrained("tiny-org/tiny-bge")
    assert hub.local == ["tiny-org/tiny-bge"]  # the offline cache was tried first
    (repo_id, patterns, kwargs), = hub.download
    assert repo_id == "tiny-org/tiny-bge"
    # what a text encoder reads, one weights file, no exports
    assert sorted(patterns) == sorted(["config.json", "model.safetensors", "vocab.txt",
                                       "tokenizer_config.json", "modules.json",
                                       "sentence_bert_config.json", "1_Pooling/config.json"])
    assert kwargs["etag_timeout"] == weights_module.HUB_TIMEOUT_S
    assert hub.info == [("tiny-org/tiny-bge", weights_module.HUB_TIMEOUT_S)]  # a bounded listing
    assert encoder.head.pooling == "cls" and encoder.head.normalize
    np.testing.assert_array_equal(encoder.encode(TEXTS), encoders["cls-vocab-only"].encode(TEXTS))


def test_failed_download_is_listed_in_the_error(hub, monkeypatch):
    with pytest.raises(CheckpointNotFoundError) as caught:
        resolve_checkpoint("tiny-org/absent")
    message = str(caught.value)
    assert "Hugging Face cache tiny-org/absent" in message
    assert "Hugging Face download tiny-org/absent: OSError: [Errno -2] Name or service not known" in message
    assert hub.download == []

    with pytest.raises(CheckpointNotFoundError, match=r"download: not attempted \(download=False\)"):
        resolve_checkpoint("tiny-org/tiny-bge", download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match=r"not attempted \(HF_HUB_OFFLINE is set\)"):
        resolve_checkpoint("tiny-org/tiny-bge")
    assert hub.download == [] and len(hub.info) == 1  # neither listed nor downloaded


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """The real huggingface_hub client against an endpoint that refuses connections: the attempt
    is listed, without a hang."""
    constants = pytest.importorskip("huggingface_hub.constants")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match="Hugging Face download tiny-org/unreachable: "):
        resolve_checkpoint("tiny-org/unreachable")
    assert time.monotonic() - start < weights_module.HUB_TIMEOUT_S + 5
    assert not any((tmp_path / "hub").rglob("*.safetensors"))


def test_silent_hub_times_out(tmp_path, monkeypatch):
    """An endpoint that accepts the connection and never answers (a captive proxy, a stalled
    mirror): the listing's timeout (``HF_HUB_ETAG_TIMEOUT`` here) ends the attempt."""
    constants = pytest.importorskip("huggingface_hub.constants")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(CheckpointNotFoundError, match="Hugging Face download tiny-org/silent: "):
            resolve_checkpoint("tiny-org/silent")
        assert time.monotonic() - start < 10


def test_hub_files_pick_one_of_each_alternative():
    files = ["config.json", "pytorch_model.bin", "tokenizer.json", "vocab.txt", "README.md",
             "onnx/model.onnx", "2_Dense/config.json", "1_Pooling/config.json", "modules.json"]
    assert weights_module.hub_files(files) == ["config.json", "pytorch_model.bin", "tokenizer.json",
                                               "modules.json", "1_Pooling/config.json",
                                               "2_Dense/config.json"]
    assert "model.safetensors" in weights_module.hub_files(None)  # no listing: every candidate


# ----------------------------------------------------------------------------- MiniLM's vocab
def test_vocab_txt_tokenizer_matches_minilm_tokenizer_json(tmp_path):
    """On a real vocabulary (all-MiniLM-L6-v2 ships both files), the tokenizer built from
    vocab.txt gives the ids of tokenizer.json, and of the committed sentence-transformers ids."""
    try:
        checkpoint = resolve_checkpoint()
    except CheckpointNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    if not (checkpoint / "vocab.txt").is_file():
        pytest.skip(f"{checkpoint} has no vocab.txt")
    vocab_only = tmp_path / "minilm-vocab"
    vocab_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, vocab_only / name)
    with np.load(Path(__file__).parent / "fixtures" / "minilm_reference.npz") as data:
        sentences = [str(s) for s in data["sentences"]]
        token_ids, lengths, index = data["token_ids"], data["token_lengths"], data["token_sentence_index"]
    texts = [*sentences, *TEXTS]
    ours = [e.ids for e in load_tokenizer(vocab_only, 256).encode_batch(texts)]
    assert ours == [e.ids for e in load_tokenizer(checkpoint, 256).encode_batch(texts)]
    for row, i in enumerate(index):
        assert ours[i] == token_ids[row, :lengths[row]].tolist(), sentences[i]
