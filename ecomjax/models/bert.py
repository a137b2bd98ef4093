"""BERT encoder (Devlin et al., 2019) as a Flax NNX module, with Hugging Face weight conversion.

transformers 5 ships no Flax models, so ecomjax owns the network and copies the Hugging Face
weights into it: ``model.safetensors`` (read with ``safetensors.numpy``) or, for checkpoints that
only publish it, ``pytorch_model.bin`` (read without torch by ``ecomjax.encoders.torch_pickle``).
Any BERT-layout checkpoint loads, whatever its size (MiniLM-L6/L12, bge-small, e5-small, ...):
the shape comes from ``config.json``, and tensor names may carry the prefix of the task model
they were saved from (``bert.`` for ``BertForMaskedLM`` / ``BertForSequenceClassification``),
whose task heads (``cls.``, ``classifier.``) and the pooler are skipped. What the network does
not implement (relative positions, a decoder) fails with the key of ``config.json`` to blame.
The pooling helpers are the sentence-transformers heads; ``ecomjax.encoders.text`` puts
tokenizer, network and head together.

Parameters are float32 and tagged with logical axis names (``vocab``, ``positions``, ``embed``,
``heads``, ``mlp``, ``norm``) so the training code can shard them like any ecomjax model; the
compute dtype (float32 or bfloat16) only changes matmuls, while layer norms, softmax, residuals
and pooling stay in float32.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError
from ecomjax.models.axes import logical_init
from ecomjax.models.layers import dense, layer_norm

_INIT = nnx.initializers.truncated_normal(stddev=0.02)  # only for fresh (untrained) models
_ZEROS, _ONES = nnx.initializers.zeros_init(), nnx.initializers.ones_init()
# Hugging Face ``hidden_act`` -> activation (transformers' ACT2FN names). BERT's "gelu" is the
# exact (erf) form; "gelu_new" and "gelu_pytorch_tanh" are both the tanh approximation.
_ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_python": partial(jax.nn.gelu, approximate=False),
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
# config.json keys without which the shape of the network is unknown (no default is safe)
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size")


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder; field names follow ecomjax, ``from_hf`` reads ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_hf(cls, hf: Mapping, source: str = "config.json") -> BertConfig:
        """Accept only what this module implements; anything else fails here, not in silence.

        A checkpoint that differs from plain BERT in a way the network would ignore (relative
        position embeddings, a decoder with cross-attention) would still load every tensor and
        then compute something else, so each such key is checked and named with ``source``
        (the file it came from) in the error.
        """
        def bad(key: str, problem: str) -> InputError:
            return InputError(f"{source}: {key} {problem}")

        if hf.get("model_type", "bert") != "bert":
            raise bad("model_type", f"{hf.get('model_type')!r} is not supported (only 'bert')")
        position = hf.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise bad("position_embedding_type", f"{position!r} is not supported (only 'absolute' "
                      "position embeddings are implemented)")
        for key in ("is_decoder", "add_cross_attention"):
            if hf.get(key):
                raise bad(key, "is true: only bidirectional encoders are supported")
        activation = hf.get("hidden_act", "gelu")
        if not isinstance(activation, str) or activation not in _ACTIVATIONS:
            raise bad("hidden_act", f"{activation!r} is not one of {sorted(_ACTIVATIONS)}")
        missing = [key for key in _REQUIRED_KEYS if key not in hf]
        if missing:
            raise InputError(f"{source}: missing {missing}: the network's shape is unknown")
        sizes = {key: hf[key] for key in (*_REQUIRED_KEYS, "max_position_embeddings",
                                          "type_vocab_size") if key in hf}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, f"must be a positive integer, got {value!r}")
        eps = hf.get("layer_norm_eps", 1e-12)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise bad("layer_norm_eps", f"must be a number in (0, 1), got {eps!r}")
        config = cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=float(eps),
            hidden_act=activation,
        )
        if config.hidden_size % config.num_heads:
            raise InputError(f"{source}: hidden_size {config.hidden_size} is not divisible by "
                             f"num_attention_heads {config.num_heads}")
        return config


# ---------------------------------------------------------------------------- network
def _precision(dtype) -> jax.lax.Precision | None:
    """float32 compute means float32 matmuls: GPUs default to TF32 and TPUs to bfloat16 passes
    for float32 dots, which would break parity with the reference (1e-4). CPUs ignore it."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _dense(d_in: int, d_out: int, axes: tuple[str, str], dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return dense(d_in, d_out, axes, dtype=dtype, precision=_precision(dtype), rngs=rngs)


def _norm(width: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance as in PyTorch: the fast E[x^2]-E[x]^2 form loses digits on BERT's
    # large-magnitude hidden dimensions, and parity is measured at 1e-4.
    return layer_norm(width, epsilon=epsilon, dtype=jnp.float32, fast_variance=False, rngs=rngs)


def _embed(rows: int, width: int, row_axis: str | None, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(rows, width, param_dtype=jnp.float32,
                     embedding_init=logical_init(_INIT, row_axis, "embed"), rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        width = config.hidden_size
        self.word = _embed(config.vocab_size, width, "vocab", rngs)
        self.position = _embed(config.max_position_embeddings, width, "positions", rngs)
        self.token_type = _embed(config.type_vocab_size, width, None, rngs)  # 2 rows: never split
        self.norm = _norm(width, config.layer_norm_eps, rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.norm(x)


class BertSelfAttention(nnx.Module):
    """Bidirectional attention over the unmasked keys; separate q/k/v as in the HF layout."""

    def __init__(self, config: BertConfig, dtype, *, rngs: nnx.Rngs):
        width = config.hidden_size
        self.num_heads = config.num_heads
        self.precision = _precision(dtype)
        self.query = _dense(width, width, ("embed", "heads"), dtype, rngs)
        self.key = _dense(width, width, ("embed", "heads"), dtype, rngs)
        self.value = _dense(width, width, ("embed", "heads"), dtype, rngs)
        self.output = _dense(width, width, ("heads", "embed"), dtype, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        head = width // self.num_heads

        def heads(y: jax.Array) -> jax.Array:
            return y.reshape(batch, length, self.num_heads, head)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision,
                            preferred_element_type=jnp.float32)
        logits = jnp.where(key_mask[:, None, None, :], logits / math.sqrt(head), -1e30)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
        context = context.reshape(batch, length, width)
        return self.output(context)


class BertLayer(nnx.Module):
    """Post-LN block: ``LN(x + attention(x))`` then ``LN(x + ffn(x))``; residuals in float32."""

    def __init__(self, config: BertConfig, dtype, *, rngs: nnx.Rngs):
        self.dtype = dtype
        self.activation = config.hidden_act
        self.attention = BertSelfAttention(config, dtype, rngs=rngs)
        self.attention_norm = _norm(config.hidden_size, config.layer_norm_eps, rngs)
        self.intermediate = _dense(config.hidden_size, config.intermediate_size, ("embed", "mlp"),
                                   dtype, rngs)
        self.output = _dense(config.intermediate_size, config.hidden_size, ("mlp", "embed"),
                             dtype, rngs)
        self.output_norm = _norm(config.hidden_size, config.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        h = x.astype(self.dtype)
        x = self.attention_norm(x + self.attention(h, key_mask).astype(jnp.float32))
        inner = _ACTIVATIONS[self.activation](self.intermediate(x.astype(self.dtype)))
        return self.output_norm(x + self.output(inner).astype(jnp.float32))


class BertModel(nnx.Module):
    """BERT encoder: token ids and attention mask in, one float32 hidden state per token out."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, self.dtype, rngs=rngs)
                                for _ in range(config.num_layers)])

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise InputError(f"sequence length {input_ids.shape[1]} exceeds the model's "
                             f"{self.config.max_position_embeddings} positions")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        key_mask = attention_mask.astype(bool)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Average of the unmasked tokens (sentence-transformers' ``pooling_mode_mean_tokens``)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def cls_pool(hidden: jax.Array) -> jax.Array:
    """The first ([CLS]) token's state (``pooling_mode_cls_token``)."""
    return hidden[:, 0].astype(jnp.float32)


def l2_normalize(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize`` (sentence-transformers' Normalize): x / max(|x|, eps)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, epsilon)


# ---------------------------------------------------------------------------- weights
# Tensors of a bare ``BertModel`` state dict that sentence heads never read: the pooler (bge and
# e5 ship one), a masked-LM head saved without a prefix, and the index buffers older
# transformers versions saved.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")
_ANCHOR = "embeddings.word_embeddings.weight"  # every BERT state dict has it, once


def _hf_targets(model: BertModel) -> dict[str, tuple[nnx.Variable, bool]]:
    """HF tensor name -> (our variable, whether to transpose: torch Linear is [out, in])."""
    e = model.embeddings
    targets: dict[str, tuple[nnx.Variable, bool]] = {
        "embeddings.word_embeddings.weight": (e.word.embedding, False),
        "embeddings.position_embeddings.weight": (e.position.embedding, False),
        "embeddings.token_type_embeddings.weight": (e.token_type.embedding, False),
        "embeddings.LayerNorm.weight": (e.norm.scale, False),
        "embeddings.LayerNorm.bias": (e.norm.bias, False),
    }
    for i, layer in enumerate(model.layers):
        prefix = f"encoder.layer.{i}."
        dense = {"attention.self.query": layer.attention.query,
                 "attention.self.key": layer.attention.key,
                 "attention.self.value": layer.attention.value,
                 "attention.output.dense": layer.attention.output,
                 "intermediate.dense": layer.intermediate,
                 "output.dense": layer.output}
        for name, linear in dense.items():
            targets[f"{prefix}{name}.weight"] = (linear.kernel, True)
            targets[f"{prefix}{name}.bias"] = (linear.bias, False)
        for name, norm in (("attention.output.LayerNorm", layer.attention_norm),
                           ("output.LayerNorm", layer.output_norm)):
            targets[f"{prefix}{name}.weight"] = (norm.scale, False)
            targets[f"{prefix}{name}.bias"] = (norm.bias, False)
    return targets


def _canonical(name: str) -> str:
    """Old checkpoints call LayerNorm's params gamma/beta."""
    if ".LayerNorm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def _encoder_tensors(tensors: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The encoder's tensors under ``BertModel`` names, whatever model saved them.

    A task model (``BertForMaskedLM``, ``BertForSequenceClassification``, ...) keeps the encoder
    under an attribute (``bert.``) beside its head (``cls.``, ``classifier.``). The prefix is read
    off the one tensor every BERT has (the word embeddings) rather than assumed to be ``bert.``,
    and the tensors outside it are the task's head, which a sentence encoder does not use.
    """
    anchors = [name for name in tensors if name == _ANCHOR or name.endswith("." + _ANCHOR)]
    if len(anchors) > 1:
        raise InputError(f"{source}: {len(anchors)} BERT encoders in one checkpoint "
                         f"({sorted(anchors)}); pass a checkpoint of one encoder")
    prefix = anchors[0].removesuffix(_ANCHOR) if anchors else ""
    return {_canonical(name.removeprefix(prefix)): value for name, value in tensors.items()
            if name.startswith(prefix)}


def load_hf_weights(model: BertModel, tensors: Mapping[str, np.ndarray],
                    source: str = "checkpoint") -> None:
    """Copy a Hugging Face BERT state dict into ``model``; any missing or stray tensor fails.

    ``source`` names the weights file in the errors. A stray tensor inside the encoder (one the
    network has no place for) means the checkpoint is not plain BERT, so it fails rather than
    being dropped.
    """
    tensors = _encoder_tensors(tensors, source)
    targets = _hf_targets(model)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(targets)
                        if not k.startswith(_IGNORED_PREFIXES))
    if missing or unexpected:
        raise InputError(f"{source} does not match BertModel: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for name, (variable, transpose) in targets.items():
        array = np.asarray(tensors[name], dtype=np.float32)
        array = array.T if transpose else array
        expected = tuple(variable.get_value().shape)
        if array.shape != expected:
            raise InputError(f"{source}: {name} has shape {array.shape}, the model built from "
                             f"config.json expects {expected}")
        variable.set_value(jnp.asarray(array))


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference


def read_weights(checkpoint: str | os.PathLike) -> tuple[dict[str, np.ndarray], Path]:
    """A checkpoint directory's state dict and the file it came from.

    safetensors first: it cannot run code and maps straight into numpy. ``pytorch_model.bin``
    (what many older BERT repositories publish alone) is read by the torch-free unpickler, which
    resolves only the globals a state dict needs.
    """
    checkpoint = Path(checkpoint)
    for name in WEIGHT_FILES:
        path = checkpoint / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.numpy import load_file

            return load_file(str(path)), path
        from ecomjax.encoders.torch_pickle import load_state_dict

        return load_state_dict(path), path
    raise InputError(f"{checkpoint}: no weights file (looked for {' or '.join(WEIGHT_FILES)})")


def load_bert(checkpoint: str | os.PathLike, *, dtype=jnp.float32) -> BertModel:
    """``BertModel`` with the weights of a checkpoint directory (config.json + weights file).

    The module is built abstractly (``nnx.eval_shape``), so no random initialisation is computed
    only to be overwritten.
    """
    checkpoint = Path(checkpoint)
    config_path = checkpoint / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(hf, dict):
        raise InputError(f"{config_path}: holds a {type(hf).__name__}, not a JSON object")
    config = BertConfig.from_hf(hf, source=str(config_path))
    tensors, path = read_weights(checkpoint)
    model = nnx.eval_shape(lambda: BertModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    load_hf_weights(model, tensors, source=str(path))
    return model
