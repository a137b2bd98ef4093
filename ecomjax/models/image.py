"""EfficientNet-Lite0 as an NNX module, and the mapping of its published PyTorch state dict.

Lite0 is EfficientNet-B0 made friendly to quantisation and mobile accelerators: ReLU6 instead of
swish, no squeeze-excitation, and a stem (32 channels) and head (1280) that width scaling never
touches. It is small (4.7M parameters, 0.4 GFLOPs at 224x224), which is what catalogue-scale
feature extraction on CPUs wants.

Matching the reference checkpoint exactly means TF 'SAME' padding (lax's ``"SAME"``), never
PyTorch's symmetric ``k // 2`` (stride-2 layers pad one more pixel at the bottom/right), and
BatchNorm epsilon 1e-3 (TF's) in inference form with the checkpoint's running statistics. Where
the weights come from and how photos are preprocessed is ``ecomjax.encoders.image``.

Images are NHWC RGB throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError
from ecomjax.models.axes import LOGICAL_AXES_KEY, logical_init

BN_EPSILON = 1e-3
STEM_WIDTH, HEAD_WIDTH, NUM_CLASSES = 32, 1280, 1000
FEATURE_DIM = HEAD_WIDTH


@dataclass(frozen=True)
class Stage:
    """One run of MBConv blocks; only its first block strides and changes width."""

    kernel: int
    stride: int
    expand: int  # hidden width = input width * expand
    width: int  # output channels
    repeats: int


# efficientnet_lite_builder.py, width and depth coefficients 1.0: 'r1_k3_s11_e1_i32_o16', ...
LITE0_STAGES = (
    Stage(3, 1, 1, 16, 1), Stage(3, 2, 6, 24, 2), Stage(5, 2, 6, 40, 2), Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3), Stage(5, 2, 6, 192, 4), Stage(3, 1, 6, 320, 1),
)

_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # TF EfficientNet's
_DENSE_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
_ZEROS = nnx.initializers.zeros_init()


def _precision(dtype: jnp.dtype) -> jax.lax.Precision | None:
    # float32 means "as the reference": no TF32/bf16 passes on GPUs and TPUs.
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _conv(c_in: int, c_out: int, kernel: int, stride: int, axes: tuple[str | None, str | None],
          dtype: jnp.dtype, rngs: nnx.Rngs, groups: int = 1) -> nnx.Conv:
    return nnx.Conv(
        c_in, c_out, (kernel, kernel), strides=stride, padding="SAME", feature_group_count=groups,
        use_bias=False, dtype=dtype, precision=_precision(dtype),
        kernel_init=logical_init(_CONV_INIT, None, None, *axes), rngs=rngs,
    )


class FrozenBatchNorm(nnx.Module):
    """BatchNorm in inference form: ``x * scale + shift`` from the checkpoint's statistics.

    The running statistics are ``BatchStat`` variables, so optimisers over ``nnx.Param`` leave
    them alone: fine-tuning keeps them frozen, the usual choice for small-batch transfer.
    """

    def __init__(self, width: int, axis: str, epsilon: float = BN_EPSILON):
        tag = {LOGICAL_AXES_KEY: (axis,)}
        self.scale = nnx.Param(jnp.ones((width,), jnp.float32), **tag)
        self.bias = nnx.Param(jnp.zeros((width,), jnp.float32), **tag)
        self.mean = nnx.BatchStat(jnp.zeros((width,), jnp.float32), **tag)
        self.var = nnx.BatchStat(jnp.ones((width,), jnp.float32), **tag)
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.epsilon)
        shift = self.bias[...] - self.mean[...] * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class MBConv(nnx.Module):
    """Inverted bottleneck, Lite flavour: 1x1 expand, kxk depthwise, 1x1 project; ReLU6, no SE.

    The residual joins only where the block keeps resolution and width, as in the reference.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int,
                 dtype: jnp.dtype, *, rngs: nnx.Rngs):
        hidden, hidden_axis = c_in * expand, ("mlp" if expand != 1 else "embed")
        if expand != 1:
            self.expand = _conv(c_in, hidden, 1, 1, ("embed", "mlp"), dtype, rngs)
            self.expand_norm = FrozenBatchNorm(hidden, "mlp")
        else:  # the first block works at the stem's width
            self.expand = self.expand_norm = None
        self.depthwise = _conv(hidden, hidden, kernel, stride, (None, hidden_axis), dtype, rngs,
                               groups=hidden)
        self.depthwise_norm = FrozenBatchNorm(hidden, hidden_axis)
        self.project = _conv(hidden, c_out, 1, 1, (hidden_axis, "embed"), dtype, rngs)
        self.project_norm = FrozenBatchNorm(c_out, "embed")
        self.residual = stride == 1 and c_in == c_out

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.expand is not None:
            h = jax.nn.relu6(self.expand_norm(self.expand(h)))
        h = jax.nn.relu6(self.depthwise_norm(self.depthwise(h)))
        h = self.project_norm(self.project(h))
        return x + h if self.residual else h


class EfficientNetLite(nnx.Module):
    """Stem, MBConv stages, 1x1 head to 1280 channels, global average pool, ImageNet classifier."""

    def __init__(self, stages: Sequence[Stage] = LITE0_STAGES, num_classes: int = NUM_CLASSES, *,
                 dtype: jnp.dtype | str = jnp.float32, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(dtype)
        self.stem = _conv(3, STEM_WIDTH, 3, 2, (None, "embed"), self.dtype, rngs)
        self.stem_norm = FrozenBatchNorm(STEM_WIDTH, "embed")
        blocks, width = [], STEM_WIDTH
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConv(width, stage.width, stage.kernel, stride, stage.expand,
                                     self.dtype, rngs=rngs))
                width = stage.width
        self.blocks = nnx.List(blocks)
        self.head = _conv(width, HEAD_WIDTH, 1, 1, ("embed", "mlp"), self.dtype, rngs)
        self.head_norm = FrozenBatchNorm(HEAD_WIDTH, "mlp")
        self.classifier = nnx.Linear(
            HEAD_WIDTH, num_classes, dtype=self.dtype, precision=_precision(self.dtype),
            kernel_init=logical_init(_DENSE_INIT, "mlp", None),
            bias_init=logical_init(_ZEROS, None), rngs=rngs,
        )

    def feature_map(self, images: jax.Array) -> jax.Array:
        """Preprocessed ``[B, H, W, 3]`` -> the 1280-channel map before pooling, float32
        ``[B, h, w, 1280]`` (7x7 positions at 224 px): what cross-attention fusion looks at."""
        x = jax.nn.relu6(self.stem_norm(self.stem(images.astype(self.dtype))))
        for block in self.blocks:
            x = block(x)
        return jax.nn.relu6(self.head_norm(self.head(x))).astype(jnp.float32)

    def features(self, images: jax.Array) -> jax.Array:
        """Preprocessed ``[B, H, W, 3]`` -> pooled float32 ``[B, 1280]`` (the image embedding)."""
        return jnp.mean(self.feature_map(images), axis=(1, 2))

    def classify(self, features: jax.Array) -> jax.Array:
        """Pooled features -> float32 ImageNet logits (dropout is a training-only identity)."""
        return self.classifier(features.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.classify(self.features(images))


def load_reference_weights(model: EfficientNetLite, state: Mapping[str, np.ndarray]) -> None:
    """Copy an ``efficientnet_lite_pytorch`` state dict into ``model``, checking every name.

    Torch convolutions are OIHW (depthwise ``[C, 1, k, k]``), ours HWIO (``[k, k, 1, C]``): one
    transpose serves both. ``num_batches_tracked`` carries nothing for inference.
    """
    targets: dict[str, tuple[nnx.Variable, tuple[int, ...] | None]] = {}

    def conv(name: str, layer: nnx.Conv) -> None:
        targets[f"{name}.weight"] = (layer.kernel, (2, 3, 1, 0))

    def norm(name: str, layer: FrozenBatchNorm) -> None:
        for key, var in (("weight", layer.scale), ("bias", layer.bias),
                         ("running_mean", layer.mean), ("running_var", layer.var)):
            targets[f"{name}.{key}"] = (var, None)

    conv("_conv_stem", model.stem)
    norm("_bn0", model.stem_norm)
    for i, block in enumerate(model.blocks):
        if block.expand is not None:
            conv(f"_blocks.{i}._expand_conv", block.expand)
            norm(f"_blocks.{i}._bn0", block.expand_norm)
        conv(f"_blocks.{i}._depthwise_conv", block.depthwise)
        norm(f"_blocks.{i}._bn1", block.depthwise_norm)
        conv(f"_blocks.{i}._project_conv", block.project)
        norm(f"_blocks.{i}._bn2", block.project_norm)
    conv("_conv_head", model.head)
    norm("_bn1", model.head_norm)
    targets["_fc.weight"] = (model.classifier.kernel, (1, 0))
    targets["_fc.bias"] = (model.classifier.bias, None)

    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(targets) - given), sorted(given - set(targets))
    if missing or unexpected:
        raise InputError(f"not an EfficientNet-Lite0 state dict: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    for name, (var, axes) in targets.items():
        value = np.asarray(state[name], np.float32)
        value = value.transpose(axes) if axes else value
        if value.shape != var.shape:
            raise InputError(f"{name}: checkpoint shape {value.shape}, model expects {var.shape}")
        var.set_value(jnp.asarray(value, var.dtype))  # whole replacement: abstract models too
