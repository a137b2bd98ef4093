"""Layers the models share: a dense layer and a LayerNorm that declare their logical axes, and the
two-layer feed-forward block (``up`` -> activation -> dropout -> ``down``) of the transformers and
the fusion heads.

Parameters are float32 whatever the compute ``dtype`` (matmuls may run in bfloat16); a
``precision`` pins float32 matmuls to full precision where parity with a reference matters (GPUs
default to TF32, TPUs to bfloat16 passes). Pruning and shrinking find feed-forward blocks by their
``up`` / ``down`` layers (``ecomjax.efficiency.prune``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ecomjax.models.axes import logical_init

TRUNCATED_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)
ZEROS, ONES = nnx.initializers.zeros_init(), nnx.initializers.ones_init()
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"gelu": jax.nn.gelu, "relu": jax.nn.relu}


def dense(d_in: int, d_out: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs, dtype=None,
          init=TRUNCATED_NORMAL, bias_init=ZEROS, precision: jax.lax.Precision | None = None) -> nnx.Linear:
    """``nnx.Linear`` whose kernel is ``axes`` (in, out) and bias ``axes[1]``."""
    return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32, precision=precision,
                      kernel_init=logical_init(init, *axes), bias_init=logical_init(bias_init, axes[1]), rngs=rngs)


def layer_norm(width: int, *, rngs: nnx.Rngs, epsilon: float = 1e-6, dtype=None,
               fast_variance: bool = True) -> nnx.LayerNorm:
    """LayerNorm along ``norm`` (``fast_variance=False``: the two-pass variance PyTorch uses)."""
    return nnx.LayerNorm(width, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                         use_fast_variance=fast_variance, scale_init=logical_init(ONES, "norm"),
                         bias_init=logical_init(ZEROS, "norm"), rngs=rngs)


class FeedForward(nnx.Module):
    """``down(dropout(activation(up(x))))``, the hidden width along ``mlp``."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float, *, rngs: nnx.Rngs,
                 activation: str = "gelu", dtype=None):
        self.up = dense(d_in, d_hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.down = dense(d_hidden, d_out, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        hidden = self.dropout(self.activation(self.up(x)), deterministic=deterministic, rngs=rngs)
        return self.down(hidden)
