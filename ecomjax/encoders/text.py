"""Texts in, sentence embeddings out: a pretrained BERT-class sentence encoder in JAX.

``TextEncoder`` puts together the checkpoint's own tokenizer (``tokenizer.json`` run by
``tokenizers``, so word pieces match the reference exactly; or, for checkpoints that ship only
``vocab.txt``, the WordPiece tokenizer transformers builds from it and ``tokenizer_config.json``),
``BertModel`` with the converted weights, and the sentence head that sentence-transformers reads
from ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``
(all-MiniLM-L6-v2 and -L12-v2: mean pooling and L2 normalisation; bge-small: [CLS] pooling and
L2 normalisation; e5-small: mean pooling). Embeddings match ``SentenceTransformer(...).encode``
within 1e-4 (``tests/test_text_encoder.py`` checks it against a committed fixture;
``tests/test_bert_checkpoints.py`` checks other shapes and layouts against a float64 reference).

The forward pass is one ``jax.jit`` function; batches are padded to a few lengths
(``LENGTH_BUCKETS``) and power-of-two row counts, so a stream of batches compiles a handful of
shapes rather than one per batch, and texts are sorted by length so little is padding.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.encoders.weights import DEFAULT_TEXT_CHECKPOINT, resolve_checkpoint
from ecomjax.errors import InputError
from ecomjax.models.bert import (
    BertConfig,
    BertModel,
    cls_pool,
    l2_normalize,
    load_bert,
    mean_pool,
)

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)  # padded sequence lengths: one compile each
Pooling = Literal["mean", "cls"]


@dataclass(frozen=True)
class SentenceHead:
    """What sentence-transformers does around the transformer, read from its files."""

    max_length: int  # tokens per text, [CLS] and [SEP] included; longer texts are truncated
    pooling: Pooling = "mean"
    normalize: bool = False  # L2-normalise the pooled vector (the ``Normalize`` module)
    lowercase: bool = False  # sentence_bert_config's do_lower_case (applied before tokenizing)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, config: BertConfig) -> SentenceHead:
        """Without the files, sentence-transformers' own defaults: mean pooling, no norm.

        A module this head cannot run (a ``Dense`` projection, say) fails rather than being
        skipped: skipping it would return vectors of another space, silently.
        """
        modules = _read_json(checkpoint / "modules.json") or []
        for module in modules:
            kind = str(module.get("type", ""))
            if not kind.endswith(_ST_MODULES):
                raise InputError(f"{checkpoint / 'modules.json'}: module type {kind!r} is not "
                                 f"supported (only {', '.join(_ST_MODULES)})")
        st_config = _read_json(checkpoint / "sentence_bert_config.json") or {}
        tok_config = _read_json(checkpoint / "tokenizer_config.json") or {}
        max_length = st_config.get("max_seq_length") or tok_config.get("model_max_length")
        max_length = min(int(max_length or config.max_position_embeddings),
                         config.max_position_embeddings)
        pooling: Pooling = "mean"
        for module in modules:
            if module.get("type", "").endswith(".Pooling"):
                pooling = _pooling_mode(_read_json(checkpoint / module["path"] / "config.json"))
        normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
        return cls(max_length, pooling, normalize, bool(st_config.get("do_lower_case", False)))


_ST_MODULES = (".Transformer", ".Pooling", ".Normalize")  # sentence-transformers' module types


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def _pooling_mode(pooling_config: Mapping | None) -> Pooling:
    if not pooling_config:
        return "mean"
    modes = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise InputError(f"unsupported sentence-transformers pooling {modes}: only mean or cls")


def load_tokenizer(checkpoint: str | os.PathLike, max_length: int):
    """The checkpoint's tokenizer truncating to ``max_length``, without padding.

    ``tokenizer.json`` when there is one, else the WordPiece tokenizer of ``vocab.txt``
    (``wordpiece_tokenizer``). sentence-transformers overrides the file's own truncation (128
    for all-MiniLM-L6-v2) with ``max_seq_length``; padding is ours to do, per bucket.
    """
    from tokenizers import Tokenizer

    checkpoint = Path(checkpoint)
    if (checkpoint / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    elif (checkpoint / "vocab.txt").is_file():
        tokenizer = wordpiece_tokenizer(checkpoint)
    else:
        raise InputError(f"{checkpoint}: no tokenizer (looked for tokenizer.json or vocab.txt)")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


_SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                   "cls_token": "[CLS]", "mask_token": "[MASK]"}  # BertTokenizer's defaults


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def wordpiece_tokenizer(checkpoint: str | os.PathLike):
    """The tokenizer transformers' ``BertTokenizer`` builds from ``vocab.txt``, as a ``tokenizers``
    object.

    Many BERT repositories predate ``tokenizer.json``; transformers then builds the fast
    tokenizer from ``vocab.txt`` and the options in ``tokenizer_config.json``. The same is built
    here, component by component (as transformers 5's ``BertTokenizer.__init__`` does), so the
    ids are the reference's: BERT's normaliser (lowercase and ``tokenize_chinese_chars`` as
    configured, accents stripped when ``strip_accents`` says so or, unset, when lowercasing),
    BERT's pre-tokeniser, WordPiece with ``##`` continuations, ``[CLS] A [SEP] (B [SEP])`` with
    type ids 0 then 1, and the special tokens matched as whole words in the input.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    checkpoint = Path(checkpoint)
    vocab_path = checkpoint / "vocab.txt"
    config_path = checkpoint / "tokenizer_config.json"
    options = _read_json(config_path) or {}
    special_map = _read_json(checkpoint / "special_tokens_map.json") or {}
    tokenizer_class = options.get("tokenizer_class")
    if tokenizer_class is not None and str(tokenizer_class).removesuffix("Fast") not in (
            "BertTokenizer", "DistilBertTokenizer"):
        raise InputError(f"{config_path}: tokenizer_class {tokenizer_class!r} has no "
                         "tokenizer.json and is not a BERT WordPiece tokenizer")
    vocab: dict[str, int] = {}
    with open(vocab_path, encoding="utf-8") as lines:  # transformers' load_vocab: one per line
        for index, line in enumerate(lines):
            vocab[line.rstrip("\n")] = index
    tokens = {key: _token_name(options.get(key)) or _token_name(special_map.get(key)) or default
              for key, default in _SPECIAL_TOKENS.items()}
    for key in ("unk_token", "cls_token", "sep_token"):
        if tokens[key] not in vocab:
            raise InputError(f"{vocab_path}: {key} {tokens[key]!r} is not in the vocabulary")
    lowercase = bool(options.get("do_lower_case", True))
    strip_accents = options.get("strip_accents")
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=tokens["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(options.get("tokenize_chinese_chars", True)),
        strip_accents=None if strip_accents is None else bool(strip_accents), lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tokens["cls_token"], tokens["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    specials = dict.fromkeys(t for t in tokens.values() if t in vocab)  # no new ids: none unseen
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def tokenize_pairs(tokenizer, queries: Sequence[str], titles: Sequence[str], max_length: int
                   ) -> dict[str, np.ndarray]:
    """``ids``, ``mask``, ``types`` ``[n, max_length]`` int32 for (query, title) pairs: the
    cross-encoder's ``[CLS] query [SEP] title [SEP]``, titles truncated first."""
    encodings = tokenizer.encode_batch(list(zip(queries, titles, strict=True)))
    n = len(encodings)
    out = {name: np.zeros((n, max_length), np.int32) for name in ("ids", "mask", "types")}
    for row, encoding in enumerate(encodings):
        length = min(len(encoding.ids), max_length)
        out["ids"][row, :length] = encoding.ids[:length]
        out["mask"][row, :length] = encoding.attention_mask[:length]
        out["types"][row, :length] = encoding.type_ids[:length]
    return out


def check_texts(texts: Sequence[str]) -> list[str]:
    """A non-empty list of strings, or an error that says which item is wrong."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it as [text]")
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("texts is empty: nothing to encode")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str: {text!r:.60}")
    return list(texts)


def _bucket(size: int, buckets: Sequence[int]) -> int:
    return next(b for b in buckets if b >= size)


def _embed(graphdef, treedef, params, input_ids, attention_mask, *, pooling: Pooling, normalize: bool):
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, params))
    hidden = model(input_ids, attention_mask)
    pooled = mean_pool(hidden, attention_mask) if pooling == "mean" else cls_pool(hidden)
    return l2_normalize(pooled) if normalize else pooled


def _tokens(graphdef, treedef, params, input_ids, attention_mask):
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, params))(input_ids, attention_mask).astype(jnp.float32)


class TextEncoder:
    """A pretrained sentence encoder: ``encode(texts) -> [N, D]`` float32 numpy embeddings."""

    def __init__(self, model: BertModel, tokenizer, head: SentenceHead):
        self.model = model
        self.tokenizer = tokenizer
        self.head = head
        self.length_buckets = tuple(sorted({b for b in LENGTH_BUCKETS if b < head.max_length}
                                           | {head.max_length}))
        graphdef, state = nnx.split(model)
        # the jitted functions take the parameters as a flat list of arrays: flattening NNX
        # Variables happens in Python and costs ~3 ms per call, as much as encoding one query
        self._state, treedef = jax.tree.flatten(state)
        self._forward = jax.jit(partial(_embed, graphdef, treedef, pooling=head.pooling,
                                        normalize=head.normalize))
        self._token_forward = jax.jit(partial(_tokens, graphdef, treedef))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = DEFAULT_TEXT_CHECKPOINT,
        *,
        dtype: str | jnp.dtype = jnp.float32,
        max_length: int | None = None,
        download: bool = True,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
    ) -> TextEncoder:
        """Load from a directory, weights package or hub id (see ``ecomjax.encoders.weights``).

        ``dtype`` is the compute dtype (parameters stay float32); ``max_length`` shortens the
        checkpoint's token limit, e.g. for short queries. ``pooling`` and ``normalize`` replace
        what the sentence-transformers files say, for checkpoints published without them (bge
        is meant for [CLS] pooling and normalisation, which a bare ``BertModel`` folder does not
        record; sentence-transformers' default would be mean pooling, unnormalised).
        """
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise InputError(f"dtype must be a floating type (float32, bfloat16), got {dtype}")
        if pooling is not None and pooling not in ("mean", "cls"):
            raise InputError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        checkpoint = resolve_checkpoint(source, download=download)
        model = load_bert(checkpoint, dtype=dtype)
        head = SentenceHead.from_checkpoint(checkpoint, model.config)
        if max_length is not None:
            if not 2 <= max_length <= model.config.max_position_embeddings:
                raise InputError(f"max_length must be in [2, "
                                 f"{model.config.max_position_embeddings}], got {max_length}")
            head = dataclasses.replace(head, max_length=max_length)
        if pooling is not None:
            head = dataclasses.replace(head, pooling=pooling)
        if normalize is not None:
            head = dataclasses.replace(head, normalize=bool(normalize))
        return cls(model, load_tokenizer(checkpoint, head.max_length), head)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, [CLS] ... [SEP], truncated to ``head.max_length``; no padding."""
        texts = check_texts(texts)
        if self.head.lowercase:
            texts = [t.lower() for t in texts]
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``[len(texts), dim]`` float32 embeddings, in the order of ``texts``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        token_ids = self.tokenize(texts)
        lengths = np.array([len(ids) for ids in token_ids])
        order = np.argsort(-lengths, kind="stable")  # longest first: batches of similar lengths
        row_buckets = sorted({1 << i for i in range(batch_size.bit_length())} | {batch_size})
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = _bucket(len(chunk), row_buckets)
            length = _bucket(int(lengths[chunk].max()), self.length_buckets)
            ids = np.zeros((rows, length), dtype=np.int32)  # padding rows/tokens are masked out
            mask = np.zeros((rows, length), dtype=np.int32)
            for row, i in enumerate(chunk):
                ids[row, :lengths[i]] = token_ids[i]
                mask[row, :lengths[i]] = 1
            embeddings = self._forward(self._state, ids, mask)
            out[chunk] = np.asarray(embeddings[:len(chunk)], dtype=np.float32)
        return out

    def token_states(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Unpooled last-layer states ``[N, L, dim]`` float32 and the token mask ``[N, L]`` int32.

        ``L`` is the longest text's token count (after truncation to ``head.max_length``), the
        same for every row, so the result can be cached and batched as one array; padding
        positions hold zeros. What fusion by cross-attention reads (one vector per word).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        token_ids = self.tokenize(texts)
        length = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), length), dtype=np.int32)
        mask = np.zeros((len(token_ids), length), dtype=np.int32)
        for row, tokens in enumerate(token_ids):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        states = np.zeros((len(token_ids), length, self.dim), dtype=np.float32)
        for start in range(0, len(token_ids), batch_size):
            chunk = slice(start, min(start + batch_size, len(token_ids)))
            rows = chunk.stop - chunk.start
            batch_ids, batch_mask = np.zeros((batch_size, length), np.int32), np.zeros((batch_size, length), np.int32)
            batch_ids[:rows], batch_mask[:rows] = ids[chunk], mask[chunk]  # fixed shape: one compile
            out = np.asarray(self._token_forward(self._state, batch_ids, batch_mask))[:rows]
            states[chunk] = out * mask[chunk, :, None]
        return states, mask
