"""Item titles for text-enhanced recommenders: read, align with the dataset's ids, embed once.

A sequence dataset renumbers items densely (``SequenceDataset.item_ids`` maps back to the file's
ids); a titles file speaks the file's ids. ``item_text_features`` joins the two and returns one
row per dense id, ready to become a model's fixed item features. An item without a title gets a
zero row and is *reported* (``ItemText.missing``), never silently given some other item's text;
a malformed line or a duplicated id is an error naming file and line.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ecomjax.data.files import open_text, parse_id, read_text
from ecomjax.errors import DataFormatError, InputError

TextNormalization = Literal["center", "whiten", "none"]


@dataclass(frozen=True)
class ItemText:
    features: np.ndarray  # [num_items + 1, D] float32; row 0 (padding) and missing items are zero
    missing: np.ndarray  # dense ids (1..num_items) that the titles file does not name
    unused: int  # titles of ids the dataset never mentions (other catalogue items)
    words: np.ndarray | None = None  # [num_items + 1, max_tokens] int32 title-word (+ attribute) ids, 0 = none
    vocabulary: tuple[str, ...] = ()  # word of id i + 1
    normalizer: TextNormalizer | None = None  # how ``features`` were normalised (for items added later)


MAX_TITLE_WORDS = 32  # first known words of a title (brand first); 98% of Beauty titles have no more
_WORD = re.compile(r"[a-z0-9]+(?:['&.\-][a-z0-9]+)*")  # "l'oreal", "e.l.f", "anti-aging", "0.5"


def title_words(title: str) -> list[str]:
    """Lower-cased words of a title, each once, in order of first appearance."""
    return list(dict.fromkeys(_WORD.findall(title.lower())))


def title_word_ids(titles: list[str], min_items: int, max_words: int = MAX_TITLE_WORDS) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[len(titles), max_words]`` word ids (1-based, 0 = padding) and the vocabulary.

    A word names a group of items only if at least ``min_items`` titles use it; rarer words would
    be one more per-item ID. Titles keep their first ``max_words`` known words (brand first).
    """
    if min_items < 1 or max_words < 1:
        raise InputError(f"min_items and max_words must be >= 1, got {min_items} and {max_words}")
    per_title = [title_words(t) for t in titles]
    counts = Counter(w for words in per_title for w in words)
    vocabulary = tuple(sorted(w for w, c in counts.items() if c >= min_items))
    index = {w: i + 1 for i, w in enumerate(vocabulary)}
    ids = np.zeros((len(titles), max_words), dtype=np.int32)
    for row, words in enumerate(per_title):
        known = [index[w] for w in words if w in index][:max_words]
        ids[row, : len(known)] = known
    return ids, vocabulary


def read_item_titles(path: str | Path) -> dict[int, str]:
    """``{item id: title}`` from a tab-separated file with a header: first column the item id,
    last column the title (``s3rec_item_id  asin  title`` in the Beauty release); or a RecBole
    atomic ``.item`` file (header ``name:type``), whose ``item_id`` and ``title`` (or
    ``movie_title``, ``name``) columns are used wherever they stand."""
    path = Path(path)
    titles: dict[int, str] = {}
    first_line: dict[int, int] = {}
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            rows = list(reader)
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: not valid tab-separated text ({exc})") from None
        if header is None or len(header) < 2:
            raise DataFormatError(f"{path}:1: expected a header with an id and a title column, got {header}")
        id_column, title_column = _title_columns(path, header)
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(f"{path}:{line}: expected {len(header)} tab-separated fields "
                                      f"({', '.join(header)}), got {len(row)}")
            if not (row[id_column].isascii() and row[id_column].isdigit()):
                raise DataFormatError(f"{path}:{line}: item id {row[id_column]!r} is not an integer (ASCII digits)")
            item = parse_id(row[id_column], f"{path}:{line}", "item id")
            if item in titles:
                raise DataFormatError(f"{path}:{line}: item id {item} appears twice (first on line "
                                      f"{first_line[item]}); one title per item")
            title = row[title_column].strip()
            if not title:
                raise DataFormatError(f"{path}:{line}: item {item} has an empty title")
            titles[item] = title
            first_line[item] = line
    if not titles:
        raise DataFormatError(f"{path}: no titles")
    return titles


def _title_columns(path: Path, header: list[str]) -> tuple[int, int]:
    """(id column, title column): first and last, or by name in a RecBole ``name:type`` header."""
    if not all(":" in h for h in header):
        return 0, len(header) - 1
    names = [h.split(":", 1)[0] for h in header]
    if "item_id" not in names:
        raise DataFormatError(f"{path}:1: a RecBole .item header needs an item_id column, got {header}")
    title = next((names.index(n) for n in ("title", "movie_title", "name") if n in names), None)
    if title is None:
        raise DataFormatError(f"{path}:1: no title column (title, movie_title or name) in {header}")
    return names.index("item_id"), title


def read_item_attributes(path: str | Path) -> dict[int, list[int]]:
    """``{item id: [attribute id, ...]}`` from a JSON object (``Beauty_item2attributes.json``:
    brand and category ids per item, as S3-Rec released them). Keys are the data file's item ids."""
    path = Path(path)
    try:
        raw = json.loads(read_text(path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise DataFormatError(f"{path}: JSON nested too deeply") from None
    except _DuplicateKey as error:
        raise DataFormatError(f"{path}: key {error.args[0]!r} appears twice in one object") from None
    if not isinstance(raw, dict) or not raw:
        raise DataFormatError(f"{path}: expected a non-empty JSON object {{item id: [attribute ids]}}")
    attributes: dict[int, list[int]] = {}
    for key, values in raw.items():
        if not (key.isascii() and key.isdigit()):
            raise DataFormatError(f"{path}: item id {key!r} is not an integer (ASCII digits)")
        item = parse_id(key, str(path), "item id")
        if (not isinstance(values, list)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
            raise DataFormatError(f"{path}: item {key}: attributes must be a list of integer ids >= 0, "
                                  f"got {values!r}")
        attributes[item] = list(dict.fromkeys(values))
    return attributes


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def attribute_token_ids(per_item: list[list[int]], min_items: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[len(per_item), max attributes]`` token ids (1-based, 0 = padding) and their names
    (``attr:<id>``) for the attributes that at least ``min_items`` items carry."""
    counts = Counter(a for values in per_item for a in values)
    kept = sorted(a for a, c in counts.items() if c >= min_items)
    index = {a: i + 1 for i, a in enumerate(kept)}
    width = max((len(v) for v in per_item), default=0)
    ids = np.zeros((len(per_item), max(width, 1)), dtype=np.int32)
    for row, values in enumerate(per_item):
        known = [index[a] for a in values if a in index]
        ids[row, : len(known)] = known
    return ids, tuple(f"attr:{a}" for a in kept)


def append_tokens(words: np.ndarray | None, vocabulary: tuple[str, ...],
                  extra: np.ndarray, extra_vocabulary: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Join two per-item token id arrays into one (``extra``'s ids shifted past ``vocabulary``),
    so attribute tokens and title words share one learned embedding table and one mean."""
    if words is None:
        return extra, extra_vocabulary
    shifted = np.where(extra > 0, extra + len(vocabulary), 0).astype(np.int32)
    return np.concatenate([words, shifted], axis=1), vocabulary + extra_vocabulary


@dataclass(frozen=True)
class TextNormalizer:
    """The ``center`` / ``whiten`` transform fitted on a catalogue, kept so that a product added
    after training (``ecomjax serve``'s ``POST /items``) gets exactly the treatment the trained
    items got. ``mean`` is the catalogue mean; ``matrix`` the whitening map (float64)."""

    how: TextNormalization
    mean: np.ndarray | None = None
    matrix: np.ndarray | None = None

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray, how: TextNormalization) -> TextNormalizer:
        if how not in ("center", "whiten", "none"):
            raise InputError(f"unknown text normalization {how!r}; choose 'center', 'whiten' or 'none'")
        if how == "none":
            return cls(how)
        mean = features[rows].mean(axis=0, keepdims=True)
        if how == "center":
            return cls(how, mean[0])
        centered = features[rows] - mean
        covariance = np.cov(centered.astype(np.float64), rowvar=False)
        values, vectors = np.linalg.eigh(covariance)
        keep = values > values.max() * 1e-6  # drop null directions instead of dividing by ~0
        return cls(how, mean[0], vectors[:, keep] / np.sqrt(values[keep]))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Normalised ``[N, D']`` float32 rows of raw ``[N, D]`` embeddings."""
        if self.how == "none":
            return np.asarray(raw, dtype=np.float32)
        centered = raw - self.mean[None, :]
        if self.matrix is not None:
            centered = (centered @ self.matrix).astype(np.float32)
        norms = np.linalg.norm(centered, axis=1, keepdims=True)
        return (centered / np.maximum(norms, 1e-12)).astype(np.float32)

    def rows(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``features`` with ``rows`` normalised and every other row zero (``none``: unchanged)."""
        if self.how == "none":
            return features
        normalized = self(features[rows])
        out = np.zeros((features.shape[0], normalized.shape[1]), dtype=np.float32)
        out[rows] = normalized
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """What ``vocab.npz`` stores of it (``from_arrays`` reads it back)."""
        out = {"text_normalization": np.asarray(self.how)}
        if self.mean is not None:
            out["text_mean"] = self.mean
        if self.matrix is not None:
            out["text_matrix"] = self.matrix
        return out

    @classmethod
    def from_arrays(cls, arrays) -> TextNormalizer:
        return cls(str(arrays["text_normalization"]), arrays.get("text_mean"), arrays.get("text_matrix"))


def normalize_features(features: np.ndarray, rows: np.ndarray,
                       how: TextNormalization = "center") -> np.ndarray:
    """Remove the direction every sentence embedding shares, then rescale rows to unit norm.

    Sentence embeddings are anisotropic: all titles of a catalogue share a large common
    component, so raw cosine similarities of unrelated products sit well above zero. ``center``
    subtracts the catalogue mean (over ``rows``, the items that have text), leaving what tells
    items apart; ``whiten`` also rotates onto the principal axes and equalises their variance
    (PCA whitening, as WhitenRec does), so the few dominant directions stop drowning the rest.
    """
    return TextNormalizer.fit(features, rows, how).rows(features, rows)


def item_text_features(path: str | Path, item_ids: np.ndarray, *, encoder: str,
                       normalization: TextNormalization = "center", word_min_items: int = 0,
                       attributes: str | Path | None = None, batch_size: int = 64,
                       cache: bool = True) -> ItemText:
    """Embed the title of every dataset item with a pretrained sentence encoder (cached).

    ``item_ids`` is ``SequenceDataset.item_ids``: entry ``d`` is the file id of dense item ``d``
    (entry 0 is padding). ``word_min_items > 0`` also returns title-word ids (``title_word_ids``)
    counted over the dataset's items. ``attributes`` (``read_item_attributes``) adds each item's
    attribute ids (brand, categories) as further tokens after its title words; attributes that only
    one of the dataset's items carries are dropped (one more per-item ID, as for rare words).
    """
    from ecomjax.encoders.feature_cache import cached_text_embeddings

    titles = read_item_titles(path)
    dense = np.arange(1, len(item_ids))
    has_title = np.array([int(item_ids[d]) in titles for d in dense], dtype=bool)
    rows = dense[has_title]
    if len(rows) == 0:
        raise DataFormatError(f"{path}: none of the dataset's {len(dense)} items has a title "
                              f"(ids are matched to the first column)")
    texts = [titles[int(item_ids[d])] for d in rows]
    embeddings = cached_text_embeddings(texts, encoder, batch_size=batch_size, enabled=cache)
    features = np.zeros((len(item_ids), embeddings.shape[1]), dtype=np.float32)
    features[rows] = embeddings
    normalizer = TextNormalizer.fit(features, rows, normalization)
    features = normalizer.rows(features, rows)
    used = {int(i) for i in item_ids[1:]}
    words, vocabulary = None, ()
    if word_min_items:
        words = np.zeros((len(item_ids), MAX_TITLE_WORDS), dtype=np.int32)
        words[rows], vocabulary = title_word_ids(texts, word_min_items)
    if attributes is not None:
        per_item = read_item_attributes(attributes)
        tokens, names = attribute_token_ids([per_item.get(int(i), []) for i in item_ids[1:]], 2)
        extra = np.zeros((len(item_ids), tokens.shape[1]), dtype=np.int32)
        extra[1:] = tokens
        words, vocabulary = append_tokens(words, vocabulary, extra, names)
    return ItemText(features, dense[~has_title], sum(1 for i in titles if i not in used), words, vocabulary,
                    normalizer)


def model_item_features(config, dataset) -> ItemText | None:
    """The fixed item features a ``ModelConfig`` asks for (``None`` for ID-only models)."""
    if config.item_fusion == "id":
        return None
    from ecomjax.data.files import resolve_data_path

    def resolve(field: str):
        return resolve_data_path(getattr(config, field), key=f"model.{field}")

    return item_text_features(resolve("item_text"), dataset.item_ids, encoder=config.text_encoder,
                              normalization=config.text_normalization,
                              word_min_items=config.title_word_min_items,
                              attributes=resolve("item_attributes") if config.item_attributes else None)
