"""Sequential recommenders: their config section, the registry and the one builder.

They share one interface: ``encode(items, positions, segments, *, deterministic, rngs) -> [B, L,
D]`` hidden states, ``item_table() -> [R, D]`` output embeddings (``R = padded_vocab(num_items +
1)``: row 0 and rows past ``num_items`` are padding, never scored), ``catalogue_scores(hidden) ->
[B, R]`` (inference scores of every row; int8 after quantization) and a ``num_items`` attribute.
Parameters carry logical axis names (``ecomjax.models.axes``) so any mesh can place them. A new
model = one module + one line in ``SEQUENTIAL_MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from flax import nnx

from ecomjax.config import AT_LEAST_1, DROPOUT, Check, ConfigError
from ecomjax.models.gru4rec import GRU4Rec
from ecomjax.models.sasrec import SASRec


@dataclass
class SequentialModelConfig:
    """Sequential recommender architecture (the ``model`` section of a next-item run)."""

    name: Literal["sasrec", "gru4rec"] = "sasrec"
    hidden_size: int = 64  # item embedding width = model width (embeddings are tied to the output)
    num_layers: int = 2  # transformer blocks or stacked RNN layers
    num_heads: int = 2  # attention heads (sasrec)
    ffn_size: int = 256  # feed-forward inner width (sasrec)
    dropout: float = 0.5  # embedding / residual / recurrent-output dropout
    attention_dropout: float = 0.5  # dropout on attention weights (sasrec)
    norm_first: bool = True  # pre-LN blocks (stable at larger learning rates); false = post-LN as in BERT
    activation: Literal["gelu", "relu"] = "gelu"
    rnn_cell: Literal["gru", "lstm"] = "gru"  # gru4rec only
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmul dtype; parameters stay float32
    # Item representation (``ecomjax.models.item_embedding``): id | add | gated | text_only. The
    # last three read one title per item from ``item_text`` (tab-separated, header, first column
    # the item id as in the data file, last column the title), embedded once with ``text_encoder``.
    item_fusion: Literal["id", "add", "gated", "text_only"] = "id"
    item_text: str | None = None  # titles file; relative paths also tried under $ECOMJAX_DATA_DIR
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # directory, weights package or hub id
    item_id_init: Literal["normal", "zeros"] = "normal"  # zeros: IDs start as residuals on the title vector
    item_id_dropout: float = 0.0  # training: drop whole ID vectors with this probability (add / gated)
    text_adapter_size: int = 0  # 0: title vector -> linear map; N: GELU MLP with N hidden units
    text_normalization: Literal["center", "whiten", "none"] = "center"  # catalogue mean off (+ PCA whitening), unit norm
    # > 0: also learn an embedding per title word used by at least this many items; an item's
    # content vector adds the mean of its words' (brands, product lines carry co-purchase signal)
    title_word_min_items: int = 0
    # JSON {item id: [attribute ids]} (brand, categories; Beauty_item2attributes.json): each
    # attribute carried by >= 2 items becomes a learned token averaged in with the title words
    item_attributes: str | None = None
    # Warm IDs, content for the rest: items with fewer training interactions than this get no ID
    # vector (title vector only), so a rarely bought item is not scored by an ID row that training
    # mostly pushed away from every user; 0 = every item has one
    item_id_min_interactions: int = 0
    # > 0: add a learned vector per popularity bucket, floor(log2(1 + training interactions)),
    # capped at this many buckets: the popularity prior of items without (or with weak) IDs
    item_count_buckets: int = 0

    RANGES: ClassVar[dict[str, Check]] = {
        "hidden_size": AT_LEAST_1, "num_layers": AT_LEAST_1, "num_heads": AT_LEAST_1, "ffn_size": AT_LEAST_1,
        "dropout": DROPOUT, "attention_dropout": DROPOUT,
    }

    def __post_init__(self) -> None:
        if self.item_fusion != "id" and not self.item_text:
            raise ConfigError(f"model.item_fusion={self.item_fusion!r} needs model.item_text "
                              "(a file with one title per item)")
        if self.item_id_init == "zeros" and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_init='zeros' makes IDs residuals on title vectors: "
                              "it needs model.item_fusion add or gated")
        if self.item_id_dropout and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_dropout needs model.item_fusion add or gated: an item "
                              "whose ID is dropped must keep its title vector")
        if not 0 <= self.item_id_dropout < 1:
            raise ConfigError(f"model.item_id_dropout: {self.item_id_dropout} is out of range; allowed: [0, 1)")
        if self.title_word_min_items < 0:
            raise ConfigError(f"model.title_word_min_items: {self.title_word_min_items} must be >= 0 (0: off)")
        if self.title_word_min_items and self.item_fusion == "id":
            raise ConfigError("model.title_word_min_items needs titles: set model.item_fusion to add, "
                              "gated or text_only and model.item_text")
        if self.item_attributes and self.item_fusion == "id":
            raise ConfigError("model.item_attributes needs titles: set model.item_fusion to add, "
                              "gated or text_only and model.item_text")
        for name in ("item_id_min_interactions", "item_count_buckets"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}: {getattr(self, name)} must be >= 0 (0: off)")
        if self.item_id_min_interactions and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_min_interactions leaves rare items their title vector only: "
                              "it needs model.item_fusion add or gated")
        if self.item_count_buckets and self.item_fusion == "id":
            raise ConfigError("model.item_count_buckets adds to the content vector: set model.item_fusion "
                              "to add, gated or text_only and model.item_text")
        if self.item_fusion == "id" and self.item_text:
            raise ConfigError("model.item_text is set but model.item_fusion is 'id', so the titles "
                              "would be ignored; choose add, gated or text_only")


SEQUENTIAL_MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def build_sequential_model(
    config: SequentialModelConfig, num_items: int, max_len: int, *, rngs: nnx.Rngs,
    item_features: np.ndarray | None = None, item_words: np.ndarray | None = None,
    item_counts: np.ndarray | None = None,
) -> SASRec | GRU4Rec:
    """``item_features``: ``[num_items + 1, D]`` content vectors for ``config.item_fusion != "id"``;
    ``item_words``: ``[num_items + 1, T]`` title-word ids for ``config.title_word_min_items``;
    ``item_counts``: ``[num_items + 1]`` training interactions per item, kept when
    ``config.item_id_min_interactions`` or ``config.item_count_buckets`` asks for them."""
    return SEQUENTIAL_MODELS[config.name](config, num_items, max_len, rngs=rngs, item_features=item_features,
                               item_words=item_words, item_counts=item_counts)
