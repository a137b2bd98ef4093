"""BERT encoder (Devlin et al., 2019) as a Flax NNX module, with Hugging Face weight conversion.

transformers 5 ships no Flax models, so ecomjax owns the network and copies the Hugging Face
safetensors (``BertModel`` layout, read with ``safetensors.numpy``) into it. The pooling helpers
are the sentence-transformers heads; ``ecomjax.encoders.text`` puts tokenizer, network and head
together.

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
# Hugging Face ``hidden_act`` -> activation. BERT's "gelu" is the exact (erf) form.
_ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


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
    def from_hf(cls, hf: Mapping) -> BertConfig:
        """Accept only what this module implements; anything else fails here, not in silence."""
        if hf.get("model_type", "bert") != "bert":
            raise InputError(f"model_type {hf.get('model_type')!r} is not supported (only 'bert')")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise InputError("only absolute position embeddings are supported, got "
                             f"{hf['position_embedding_type']!r}")
        if hf.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise InputError(f"hidden_act {hf['hidden_act']!r} is not one of {sorted(_ACTIVATIONS)}")
        config = cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=hf.get("hidden_act", "gelu"),
        )
        if config.hidden_size % config.num_heads:
            raise InputError(f"hidden_size {config.hidden_size} is not divisible by "
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
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")  # unused by sentence heads


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
    """Strip a ``bert.`` task-model prefix; old checkpoints call LayerNorm's params gamma/beta."""
    name = name.removeprefix("bert.")
    if ".LayerNorm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def load_hf_weights(model: BertModel, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy a Hugging Face BERT state dict into ``model``; any missing or stray tensor fails."""
    tensors = {_canonical(k): v for k, v in tensors.items()}
    targets = _hf_targets(model)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(targets)
                        if not k.startswith(_IGNORED_PREFIXES))
    if missing or unexpected:
        raise InputError(f"checkpoint does not match BertModel: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for name, (variable, transpose) in targets.items():
        array = np.asarray(tensors[name], dtype=np.float32)
        array = array.T if transpose else array
        expected = tuple(variable.get_value().shape)
        if array.shape != expected:
            raise InputError(f"{name}: checkpoint shape {array.shape}, model expects {expected}")
        variable.set_value(jnp.asarray(array))


def load_bert(checkpoint: str | os.PathLike, *, dtype=jnp.float32) -> BertModel:
    """``BertModel`` with the weights of a checkpoint directory (config.json + model.safetensors).

    The module is built abstractly (``nnx.eval_shape``), so no random initialisation is computed
    only to be overwritten.
    """
    from safetensors.numpy import load_file

    checkpoint = Path(checkpoint)
    config = BertConfig.from_hf(json.loads((checkpoint / "config.json").read_text()))
    model = nnx.eval_shape(lambda: BertModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    load_hf_weights(model, load_file(str(checkpoint / "model.safetensors")))
    return model
