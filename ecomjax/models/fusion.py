"""Text + image -> one product vector: four ways to fuse, and which encoder weights may train.

``FusionHead`` fuses the outputs of the pretrained encoders (``ecomjax.encoders``); its
``fusion`` switch picks the mechanism, so experiments compare them with everything else equal
(``text`` and ``image`` are the single-modality baselines: the same projection and MLP on one
input, so an ablation changes only what is fused):

- ``concat``: both projections side by side, then an MLP; the baseline every paper reports;
- ``gated``: per-example softmax weights over the two modalities, computed from both, so the
  model can lean on the photo when the title is uninformative and the other way round;
- ``cross_attention``: text tokens attend over the image feature map's spatial positions, so
  "striped" can look at where the stripes are; padding tokens are masked, the result pooled;
- ``product``: elementwise product of the projections, then an MLP; a cheap bilinear
  interaction that only fires where both modalities agree.

Every mode ends at the same ``output_dim``. ``AttributeClassifier`` reads attributes off the fused
vector (one linear head each); ``MultimodalEncoder`` puts the head on top of
``BertModel`` and ``EfficientNetLite``; ``trainable_filter`` / ``trainability_optimizer`` decide
whether those backbones stay frozen, train their last N blocks, or train fully.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ecomjax.config import ConfigError
from ecomjax.errors import InputError
from ecomjax.models.axes import logical_init
from ecomjax.models.bert import BertModel
from ecomjax.models.image import EfficientNetLite
from ecomjax.models.layers import FeedForward, dense, layer_norm

FUSION_MODES = ("text", "image", "concat", "gated", "cross_attention", "product")
SINGLE_MODALITY = ("text", "image")
BACKBONE_MODES = ("frozen", "partial", "full")
Fusion = Literal["text", "image", "concat", "gated", "cross_attention", "product"]
Backbone = Literal["frozen", "partial", "full"]

_INIT = nnx.initializers.truncated_normal(stddev=0.02)
_ZEROS, _ONES = nnx.initializers.zeros_init(), nnx.initializers.ones_init()


@dataclass
class FusionConfig:
    """The fusion head and how much of the encoders trains; a task config embeds it."""

    fusion: Fusion = "gated"  # text | image (baselines) | concat | gated | cross_attention | product
    text_dim: int = 384  # text encoder width (MiniLM-L6 token states / sentence embedding)
    image_dim: int = 1280  # image encoder channels (EfficientNet-Lite0 feature map / pooled)
    hidden_size: int = 256  # width both modalities are projected to before they meet
    mlp_size: int = 512  # inner width of the output MLP / the cross-attention feed-forward
    output_dim: int = 256  # fused product vector width, the same for every fusion mode
    num_heads: int = 4  # cross_attention heads; hidden_size must be divisible by it
    dropout: float = 0.1  # on projected inputs, attention output and MLP hidden units
    backbone: Backbone = "frozen"  # encoders: frozen | partial (last blocks train) | full
    trainable_blocks: int = 2  # partial: last N BERT layers and last N MBConv blocks train
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmuls; params stay float32

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ConfigError(f"model.fusion: unknown fusion {self.fusion!r}; choose one of {list(FUSION_MODES)}")
        if self.backbone not in BACKBONE_MODES:
            raise ConfigError(f"model.backbone: unknown backbone mode {self.backbone!r}; choose one of "
                              f"{list(BACKBONE_MODES)}")
        if self.fusion == "cross_attention" and self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} must be divisible by "
                              f"model.num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1 or self.trainable_blocks < 0:
            raise ConfigError("model.dropout must be in [0, 1) and model.trainable_blocks >= 0")


def _linear(d_in: int, d_out: int, axes: tuple[str | None, str | None], dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
    return dense(d_in, d_out, axes, dtype=dtype, rngs=rngs)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return layer_norm(width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)


def masked_mean(tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``[B, L, D]`` -> ``[B, D]`` mean over unmasked tokens (``where``: padding may hold NaN)."""
    if mask is None:
        return jnp.mean(tokens, axis=1)
    keep = mask.astype(bool)[..., None]
    total = jnp.sum(jnp.where(keep, tokens, 0), axis=1)
    return total / jnp.maximum(jnp.sum(keep, axis=1), 1).astype(tokens.dtype)


class CrossAttention(nnx.Module):
    """Multi-head attention from text tokens (queries) to image positions (keys and values).

    Each token attends only over the image, never over other tokens, so a padding token cannot
    change a real token's result; the caller excludes padding again when pooling.
    """

    def __init__(self, width: int, num_heads: int, dtype, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.query = _linear(width, width, ("embed", "heads"), dtype, rngs)
        self.key = _linear(width, width, ("embed", "heads"), dtype, rngs)
        self.value = _linear(width, width, ("embed", "heads"), dtype, rngs)
        self.out = _linear(width, width, ("heads", "embed"), dtype, rngs)

    def __call__(self, text: jax.Array, image: jax.Array) -> jax.Array:
        (batch, length, width), positions = text.shape, image.shape[1]
        head = width // self.num_heads
        q = self.query(text).reshape(batch, length, self.num_heads, head)
        k = self.key(image).reshape(batch, positions, self.num_heads, head)
        v = self.value(image).reshape(batch, positions, self.num_heads, head)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / jnp.sqrt(jnp.float32(head)), axis=-1).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        return self.out(context)


class FusionHead(nnx.Module):
    """Fuses text and image features into ``[B, output_dim]`` float32 product vectors.

    ``text`` is ``[B, Dt]`` (sentence embedding) or ``[B, L, Dt]`` token states with
    ``text_mask`` ``[B, L]`` (1 = real token); ``image`` is ``[B, Di]`` pooled, ``[B, P, Di]``
    or a ``[B, H, W, Di]`` feature map. Pooled modes average what is not pooled yet;
    ``cross_attention`` wants tokens and a feature map (pooled inputs act as one token or one
    position). Inputs are layer-normed first: MiniLM vectors have unit norm while
    EfficientNet's ReLU6 features reach 6, and neither modality should win by scale alone.
    """

    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        if config.fusion not in FUSION_MODES:  # also for configs built with dataclasses.replace
            raise InputError(f"unknown fusion {config.fusion!r}; choose one of "
                             f"{list(FUSION_MODES)}")
        self.fusion = config.fusion
        dtype, width = jnp.dtype(config.compute_dtype), config.hidden_size
        uses_text, uses_image = config.fusion != "image", config.fusion != "text"
        self.text_norm = _layer_norm(config.text_dim, rngs) if uses_text else None
        self.text_proj = (_linear(config.text_dim, width, ("embed", "embed"), dtype, rngs)
                          if uses_text else None)
        self.image_norm = _layer_norm(config.image_dim, rngs) if uses_image else None
        self.image_proj = (_linear(config.image_dim, width, ("embed", "embed"), dtype, rngs)
                           if uses_image else None)
        self.dropout = nnx.Dropout(config.dropout)
        if config.fusion == "cross_attention":
            self.attention = CrossAttention(width, config.num_heads, dtype, rngs=rngs)
            self.attention_norm = _layer_norm(width, rngs)
            self.ffn = FeedForward(width, config.mlp_size, width, config.dropout, dtype=dtype, rngs=rngs)
            self.ffn_norm = _layer_norm(width, rngs)
            self.out = _linear(width, config.output_dim, ("embed", "embed"), dtype, rngs)
            self.gate = self.mlp = None
            return
        self.attention = None
        # gated: 2 logits, one per modality (too few to shard)
        self.gate = (_linear(2 * width, 2, ("embed", None), dtype, rngs)
                     if config.fusion == "gated" else None)
        d_in = 2 * width if config.fusion == "concat" else width
        self.mlp = FeedForward(d_in, config.mlp_size, config.output_dim, config.dropout, dtype=dtype, rngs=rngs)

    def _project(self, text, image, text_mask, *, pooled: bool):
        if image.ndim == 4:  # feature map -> positions
            image = image.reshape(image.shape[0], -1, image.shape[-1])
        if pooled:
            text = masked_mean(text, text_mask) if text.ndim == 3 else text
            image = jnp.mean(image, axis=1) if image.ndim == 3 else image
        else:
            if text.ndim == 2:
                text, text_mask = text[:, None], None
            image = image[:, None] if image.ndim == 2 else image
        t = (None if self.text_proj is None
             else self.text_proj(self.text_norm(text.astype(jnp.float32))))
        i = (None if self.image_proj is None
             else self.image_proj(self.image_norm(image.astype(jnp.float32))))
        return t, i, text_mask

    def modality_weights(self, text: jax.Array, image: jax.Array,
                         text_mask: jax.Array | None = None) -> jax.Array:
        """``[B, 2]`` (text, image) weights of ``gated`` fusion; each row sums to 1."""
        if self.gate is None:
            raise InputError(f"modality weights exist only for fusion='gated', not {self.fusion!r}")
        t, i, _ = self._project(text, image, text_mask, pooled=True)
        return self._weights(t, i)

    def _weights(self, t: jax.Array, i: jax.Array) -> jax.Array:
        logits = self.gate(jnp.concatenate([t, i], axis=-1)).astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1)

    def __call__(self, text: jax.Array, image: jax.Array, text_mask: jax.Array | None = None, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        def drop(x):
            return self.dropout(x, deterministic=deterministic, rngs=rngs)

        pooled = self.fusion != "cross_attention"
        t, i, text_mask = self._project(text, image, text_mask, pooled=pooled)
        if self.fusion == "cross_attention":
            t = drop(t)
            x = self.attention_norm(t + drop(self.attention(t, drop(i))))
            x = self.ffn_norm(x + drop(self.ffn(x, deterministic=deterministic, rngs=rngs)))
            return self.out(masked_mean(x, text_mask)).astype(jnp.float32)
        if self.fusion in SINGLE_MODALITY:
            fused = t if self.fusion == "text" else i
        elif self.fusion == "concat":
            fused = jnp.concatenate([t, i], axis=-1)
        elif self.fusion == "gated":
            weights = self._weights(t, i).astype(t.dtype)
            fused = weights[:, :1] * t + weights[:, 1:] * i
        else:  # product
            fused = t * i
        return self.mlp(drop(fused), deterministic=deterministic, rngs=rngs).astype(jnp.float32)


class AttributeClassifier(nnx.Module):
    def __init__(self, fusion: FusionConfig, num_classes: Mapping[str, int], *, rngs: nnx.Rngs):
        self.encoder = FusionHead(fusion, rngs=rngs)
        self.names = tuple(num_classes)
        self.heads = nnx.Dict({
            name: nnx.Linear(fusion.output_dim, n, kernel_init=logical_init(_INIT, "embed", None),
                             bias_init=logical_init(nnx.initializers.zeros_init(), None), rngs=rngs)
            for name, n in num_classes.items()})

    def __call__(self, text, mask, image, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        fused = self.encoder(text, image, mask, deterministic=deterministic, rngs=rngs)
        hidden = jax.nn.gelu(fused)
        return {name: self.heads[name](hidden) for name in self.names}


class MultimodalEncoder(nnx.Module):
    """BERT token states and the EfficientNet feature map, fused by a ``FusionHead``.

    The attribute names ``text_encoder``, ``image_encoder`` and ``head`` are what
    ``trainable_filter`` reads to tell backbone parameters from the head's.
    """

    def __init__(self, text_encoder: BertModel, image_encoder: EfficientNetLite,
                 config: FusionConfig, *, rngs: nnx.Rngs):
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.head = FusionHead(config, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, images: jax.Array, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        tokens = self.text_encoder(input_ids, attention_mask)
        feature_map = self.image_encoder.feature_map(images)
        return self.head(tokens, feature_map, attention_mask, deterministic=deterministic,
                         rngs=rngs)


# ---------------------------------------------------------------------------- trainability
# backbone attribute -> (its list of blocks, modules after the blocks, modules fusion never uses)
BACKBONE_LAYOUT = {
    "text_encoder": ("layers", (), ()),  # BertModel: embeddings, layers
    "image_encoder": ("blocks", ("head", "head_norm"), ("classifier",)),  # EfficientNetLite
}
TRAINABLE, FROZEN = "trainable", "frozen"


def _block_counts(model: nnx.Module) -> dict[str, int]:
    return {name: len(getattr(getattr(model, name), blocks))
            for name, (blocks, _, _) in BACKBONE_LAYOUT.items() if hasattr(model, name)}


def parameter_label(path: tuple, backbone: Backbone, trainable_blocks: int,
                    block_counts: dict[str, int]) -> str:
    """``"trainable"`` or ``"frozen"`` for the parameter at ``path`` (NNX path of str/int keys).

    Anything outside the backbones (the fusion head) trains. In a backbone, ``full`` trains
    everything the fusion model uses; ``partial`` the last ``trainable_blocks`` blocks plus what
    follows them (EfficientNet's 1x1 head conv), keeping embeddings and stem frozen: the early
    layers hold the generic features, the late ones the task-specific ones worth adapting.
    Unused modules (the ImageNet classifier) stay frozen, so weight decay cannot touch them.
    """
    if backbone not in BACKBONE_MODES:
        raise InputError(f"unknown backbone mode {backbone!r}; choose one of "
                         f"{list(BACKBONE_MODES)}")
    if not path or path[0] not in block_counts:
        return TRAINABLE
    blocks, tail, unused = BACKBONE_LAYOUT[path[0]]
    part = path[1] if len(path) > 1 else None
    if backbone == "frozen" or part in unused:
        return FROZEN
    if backbone == "full" or part in tail:
        return TRAINABLE if backbone == "full" or trainable_blocks > 0 else FROZEN
    first = block_counts[path[0]] - trainable_blocks
    in_last = part == blocks and len(path) > 2 and int(path[2]) >= first
    return TRAINABLE if in_last else FROZEN


def trainable_filter(model: nnx.Module, backbone: Backbone, trainable_blocks: int = 0):
    """An NNX filter selecting the trainable ``Param``s of ``model``.

    Use it as ``nnx.Optimizer(model, tx, wrt=f)`` with ``nnx.grad(..., argnums=nnx.DiffState(0,
    f))`` (or ``nnx.split(model, f, ...)`` in pure train steps): frozen weights then get neither
    gradients nor optimizer state, which is where frozen backbones save their memory.
    """
    counts = _block_counts(model)

    def is_trainable(path: tuple, variable) -> bool:
        return isinstance(variable, nnx.Param) and (
            parameter_label(path, backbone, trainable_blocks, counts) == TRAINABLE)

    return is_trainable


def parameter_labels(model: nnx.Module, params: nnx.State, backbone: Backbone,
                     trainable_blocks: int = 0) -> nnx.State:
    """``params`` (a ``Param`` state of ``model``) with every array replaced by its label."""
    counts = _block_counts(model)
    return nnx.map_state(lambda path, variable: variable.replace(
        parameter_label(path, backbone, trainable_blocks, counts)), params)


def trainability_optimizer(tx: optax.GradientTransformation, model: nnx.Module,
                           backbone: Backbone, trainable_blocks: int = 0
                           ) -> optax.GradientTransformation:
    """``optax.multi_transform``: ``tx`` for trainable parameters, zero updates for frozen ones.

    For a hand-written step that differentiates the whole ``Param`` state (the loop
    differentiates only a stage's ``trainable`` filter, ``trainable_filter`` here): the result
    is the same, at the cost of gradients for frozen weights.
    """
    return optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
        lambda params: parameter_labels(model, params, backbone, trainable_blocks))
