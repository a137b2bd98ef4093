"""Item representations: a learned ID embedding, fixed content features (title embeddings), or both.

An ID embedding only knows what the interaction log taught it: an item seen twice has a
near-random vector and a new item none at all. A title embedding from a pretrained sentence
encoder knows that two serums are alike before anyone bought either. ``ItemEmbedding`` combines
the two into the one table a recommender reads its inputs from and scores its outputs against:

- ``id``: the classic table (no content);
- ``add``: ID vector + a learned projection of the text vector;
- ``gated``: a learned per-item gate mixes the two, so well-observed items may lean on their ID
  and rare ones on their text;
- ``text_only``: the projection alone: every item, however cold, gets a content vector.

The content vector is the projected sentence embedding of the title, plus (with ``words``) the
mean of learned embeddings of the title's words. A frozen sentence encoder says what a product
*is*; it cannot learn what the log shows about a word: that buyers of one OPI polish come back
for another (a fifth of Beauty's test targets share a brand with the user's history). Word
embeddings are trained with the recommender, so a brand or product-line word gathers the
co-purchase signal of every item that names it, and a rarely bought item inherits it.

Popularity (``counts``, training interactions per item): an ID row learns mostly from the full
softmax pushing it away from users who bought something else, so a rarely bought item ends with a
long row pointing away from everyone (Beauty: mean norm 1.3-2.5 for items with 0-4 interactions,
0.8 for the most bought) that outweighs its title. ``id_min_interactions`` gives items below it no
ID vector at all, and ``count_buckets`` adds one learned vector per popularity bucket
(``floor(log2(1 + count))``) to every content vector: a shared popularity prior in place of the
per-item one. Measured on Beauty (README): with both (5 interactions, 8 buckets) every target
bucket from 5 interactions up gains 2-8% and the rarest fifth of targets loses 57%, for the same
test NDCG@10 overall; the ID row of a rare item is also the evidence that it sells at all.

Content features are ``ItemFeatures`` variables: part of the model (and of its checkpoints, so
a restored run needs no encoder), never trained, laid out along ``vocab`` like the ID table.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError
from ecomjax.models.axes import logical_init, padded_vocab, zero_padded_rows

ItemFusion = Literal["id", "add", "gated", "text_only"]
ITEM_FUSIONS = ("id", "add", "gated", "text_only")

_INIT = nnx.initializers.truncated_normal(stddev=0.02)
_ZEROS = nnx.initializers.zeros_init()


class ItemFeatures(nnx.Variable):
    """Fixed per-item content vectors: carried in the model state, excluded from training."""


def item_count_options(config, counts: np.ndarray | None) -> dict:
    """``ItemEmbedding`` keyword arguments for a ``ModelConfig``'s popularity options (none when off)."""
    if not (config.item_id_min_interactions or config.item_count_buckets):
        return {}
    if counts is None:
        raise InputError("model.item_id_min_interactions / item_count_buckets need the training "
                         "interactions per item (item_counts)")
    return {"counts": counts, "id_min_interactions": config.item_id_min_interactions,
            "count_buckets": config.item_count_buckets}


class ItemEmbedding(nnx.Module):
    """``table() -> [padded_vocab(num_items + 1), width]``; ``__call__(items)`` looks rows up.

    Rows past ``num_items`` are zero in every parameter and feature they are built from; row 0
    (the padding id) has no text. Losses and ranking mask both regardless.
    """

    def __init__(self, num_items: int, width: int, *, fusion: ItemFusion = "id",
                 features: np.ndarray | None = None, id_init: str = "normal", id_dropout: float = 0.0,
                 text_adapter_size: int = 0, words: np.ndarray | None = None, counts: np.ndarray | None = None,
                 id_min_interactions: int = 0, count_buckets: int = 0, rngs: nnx.Rngs):
        if fusion not in ITEM_FUSIONS:
            raise InputError(f"unknown item fusion {fusion!r}; choose one of {list(ITEM_FUSIONS)}")
        if (fusion == "id") != (features is None):
            raise InputError("item features are required for item fusion "
                             f"{fusion!r}" if features is None else
                             "item features were given but item fusion is 'id'; choose add, "
                             "gated or text_only to use them")
        self.num_items, self.fusion = num_items, fusion
        rows = padded_vocab(num_items + 1)
        if id_init not in ("normal", "zeros"):
            raise InputError(f"unknown id_init {id_init!r}; choose 'normal' or 'zeros'")
        # zeros: with text, an item starts as its title's vector and its ID learns a residual;
        # an item seen rarely then keeps a clean content vector instead of init noise added to it
        base = _INIT if id_init == "normal" else _ZEROS
        table_init = logical_init(zero_padded_rows(base, num_items + 1), "vocab", "embed")
        self.ids = (nnx.Embed(rows, width, embedding_init=table_init, rngs=rngs)
                    if fusion != "text_only" else None)
        if id_dropout and fusion not in ("add", "gated"):
            raise InputError(f"id_dropout needs item fusion add or gated (an item must keep its text "
                             f"vector when its ID is dropped), not {fusion!r}")
        # Training drops an item's whole ID vector with this probability (inputs per token, the
        # output table per row), so its title vector must carry it: IDs cannot memorise alone.
        self.id_dropout = nnx.Dropout(id_dropout, broadcast_dims=(-1,)) if id_dropout else None
        if words is None:
            self.words = self.word_embedding = None
        elif features is None:
            raise InputError("title words need the title features too (item fusion add, gated or text_only)")
        else:
            self._init_words(np.asarray(words), num_items, rows, width, rngs)
        self._init_counts(counts, id_min_interactions, count_buckets, fusion, features is not None,
                          num_items, rows, width, rngs)
        if features is None:
            self.features = self.text_proj = self.text_adapter = self.gate = None
            return
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != num_items + 1:
            raise InputError(f"item features must be [num_items + 1, D] = [{num_items + 1}, D], "
                             f"got {list(features.shape)}")
        if not np.isfinite(features).all():
            raise InputError("item features contain NaN or infinite values")
        padded = np.zeros((rows, features.shape[1]), dtype=np.float32)
        padded[: num_items + 1] = features
        padded[0] = 0.0
        self.features = ItemFeatures(jnp.asarray(padded), **{"logical_axes": ("vocab", None)})
        # text_adapter_size > 0: a GELU MLP adapter (as LLM-ESR / UniSRec put between a frozen
        # text encoder and the recommender) instead of one linear map
        d_in = features.shape[1]
        self.text_adapter = (nnx.Linear(d_in, text_adapter_size, kernel_init=logical_init(_INIT, None, "mlp"),
                                        bias_init=logical_init(_ZEROS, "mlp"), rngs=rngs)
                             if text_adapter_size else None)
        d_in = text_adapter_size or d_in
        self.text_proj = nnx.Linear(d_in, width, kernel_init=logical_init(_INIT, "mlp" if text_adapter_size else None, "embed"),
                                    bias_init=logical_init(_ZEROS, "embed"), rngs=rngs)
        # gated: one logit per item from both views; starts near an even mix
        self.gate = (nnx.Linear(2 * width, 1, kernel_init=logical_init(_INIT, "embed", None),
                                bias_init=logical_init(_ZEROS, None), rngs=rngs)
                     if fusion == "gated" else None)

    def _init_words(self, words: np.ndarray, num_items: int, rows: int, width: int, rngs: nnx.Rngs) -> None:
        if words.ndim != 2 or words.shape[0] != num_items + 1 or not np.issubdtype(words.dtype, np.integer):
            raise InputError(f"title words must be integer ids [num_items + 1, max_words] = "
                             f"[{num_items + 1}, T], got {words.dtype} {list(words.shape)}")
        if words.size and words.min() < 0:
            raise InputError("title word ids must be >= 0 (0 is padding)")
        vocab = int(words.max(initial=0)) + 1
        padded = np.zeros((rows, words.shape[1]), dtype=np.int32)
        padded[: num_items + 1] = words
        padded[0] = 0
        self.words = ItemFeatures(jnp.asarray(padded), **{"logical_axes": ("vocab", None)})
        word_init = logical_init(zero_padded_rows(_INIT, vocab), None, "embed")
        # word 0 pads short titles: masked out of every mean, so its row never gets a gradient
        self.word_embedding = nnx.Embed(padded_vocab(vocab), width, embedding_init=word_init, rngs=rngs)

    def _init_counts(self, counts, id_min_interactions: int, count_buckets: int, fusion: str, has_text: bool,
                     num_items: int, rows: int, width: int, rngs: nnx.Rngs) -> None:
        self.id_min_interactions, self.count_buckets = id_min_interactions, count_buckets
        if not (id_min_interactions or count_buckets):
            self.counts = self.count_embedding = None
            return
        if not has_text:
            raise InputError("id_min_interactions / count_buckets need item content vectors "
                             "(item fusion add, gated or text_only)")
        if id_min_interactions and fusion not in ("add", "gated"):
            raise InputError(f"id_min_interactions needs item fusion add or gated, not {fusion!r}")
        counts = np.asarray(counts)
        if counts.shape != (num_items + 1,) or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
            raise InputError(f"item counts must be integers >= 0 of shape [num_items + 1] = [{num_items + 1}], "
                             f"got {counts.dtype} {list(counts.shape)}")
        padded = np.zeros(rows, dtype=np.int32)
        padded[: num_items + 1] = counts
        self.counts = ItemFeatures(jnp.asarray(padded), **{"logical_axes": ("vocab",)})
        self.count_embedding = (nnx.Embed(count_buckets, width, embedding_init=logical_init(_INIT, None, "embed"),
                                          rngs=rngs) if count_buckets else None)

    def _rows(self, items: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """Training interactions and ``is a catalogue item`` (not padding) of ``items`` (default: every row)."""
        counts = self.counts[...]
        index = jnp.arange(counts.shape[0]) if items is None else items
        counts = counts if items is None else jnp.take(counts, items, axis=0)
        return counts, (index >= 1) & (index <= self.num_items)

    def count_vectors(self, items: jax.Array | None = None) -> jax.Array:
        """The learned vector of each item's popularity bucket (zero for padding rows)."""
        counts, real = self._rows(items)
        bucket = jnp.minimum(jnp.floor(jnp.log2(1.0 + counts.astype(jnp.float32))), self.count_buckets - 1)
        return jnp.where(real[..., None], self.count_embedding(bucket.astype(jnp.int32)), 0.0)

    def _mask_ids(self, ids: jax.Array, items: jax.Array | None = None) -> jax.Array:
        if not self.id_min_interactions:
            return ids
        counts, _ = self._rows(items)
        return jnp.where((counts >= self.id_min_interactions)[..., None], ids, 0.0)

    def word_vectors(self, items: jax.Array | None = None) -> jax.Array:
        """Mean learned embedding of each item's title words (zero for an item with none)."""
        words = self.words[...]
        if items is not None:
            words = jnp.take(words, items, axis=0)
        present = (words > 0)[..., None]
        total = jnp.sum(jnp.where(present, self.word_embedding(words), 0.0), axis=-2)
        return total / jnp.maximum(jnp.sum(present, axis=-2), 1)

    def text_vectors(self, items: jax.Array | None = None) -> jax.Array:
        """Content vectors of ``items`` (default: every row): the projected title embedding (+ the
        title-word mean); rows without text stay zero, so no projection bias leaks into them."""
        features = self.features[...]
        if items is not None:
            features = jnp.take(features, items, axis=0)
        has_text = jnp.any(features != 0, axis=-1, keepdims=True)
        if self.text_adapter is not None:
            features = jax.nn.gelu(self.text_adapter(features))
        text = jnp.where(has_text, self.text_proj(features), 0.0)
        if self.words is not None:
            text = text + self.word_vectors(items)
        return text if self.count_embedding is None else text + self.count_vectors(items)

    def _combine(self, ids: jax.Array | None, text: jax.Array) -> jax.Array:
        if self.fusion == "text_only":
            return text
        if self.fusion == "add":
            return ids + text
        weight = jax.nn.sigmoid(self.gate(jnp.concatenate([ids, text], axis=-1)))
        return weight * ids + (1.0 - weight) * text

    def _drop(self, ids: jax.Array | None, deterministic: bool, rngs) -> jax.Array | None:
        if self.id_dropout is None or ids is None:
            return ids
        return self.id_dropout(ids, deterministic=deterministic, rngs=rngs)

    def _id_table(self) -> jax.Array | None:
        if self.ids is None:
            return None
        # an int8 table (ecomjax.efficiency.quantize.Int8Table) after post-training quantization
        return self._mask_ids(self.ids.dequantize() if hasattr(self.ids, "dequantize") else self.ids.embedding[...])

    def table(self, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        if self.fusion == "id":
            return self._id_table()
        return self._combine(self._drop(self._id_table(), deterministic, rngs), self.text_vectors())

    def scores(self, hidden: jax.Array) -> jax.Array:
        """``hidden [..., D] -> [..., R]`` float32 scores of every table row (inference).

        An int8 ID table scores in int8 itself (``Int8Table.scores``): the catalogue matmul is
        most of a recommender's inference FLOPs."""
        if self.fusion == "id" and hasattr(self.ids, "scores"):
            return self.ids.scores(hidden)
        table = self.table()
        return jnp.einsum("...d,nd->...n", hidden, table.astype(hidden.dtype), preferred_element_type=jnp.float32)

    def __call__(self, items: jax.Array, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """Rows of ``table()`` for ``items``, computed for those rows only (a batch's inputs
        need a few hundred projections, not the whole catalogue's)."""
        if self.fusion == "id":
            return self.ids(items)
        ids = None if self.ids is None else self._mask_ids(self.ids(items), items)
        return self._combine(self._drop(ids, deterministic, rngs), self.text_vectors(items))
