"""Class vocabularies of the fashion attributes and the product-disjoint split.

Both are built so that results mean something: vocabularies on the training products only
(rare values merged into ``"other"``, never dropped), the split by a hash of each product id,
deterministic and stratified by article type, so no test product is ever trained on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ecomjax.data.fashion import ATTRIBUTE_FIELDS, MISSING, OTHER, Product
from ecomjax.errors import InputError, UnknownKeyError


@dataclass(frozen=True)
class Vocabulary:
    """Class names of one attribute; rare values share the ``"other"`` class (always last).

    Rare values are merged, not dropped: every product stays in the catalogue, so retrieval and
    the image/text pipelines see the same products for every attribute, and a classifier keeps
    a valid target for them. ``merged`` records each merged value and its count. ``"other"`` is
    always present so values never seen when the vocabulary was built (in valid/test) have a
    class too. Missing values (NA) get ``MISSING`` (-1), to be masked, not a class.
    """

    attribute: str  # Product field name, e.g. "article_type"
    classes: tuple[str, ...]
    merged: dict[str, int] = field(default_factory=dict)

    def index(self, value: str | None) -> int:
        if value is None:
            return MISSING
        return self._lookup.get(value, len(self.classes) - 1)

    def encode(self, products: Iterable[Product]) -> np.ndarray:
        return np.array([self.index(getattr(p, self.attribute)) for p in products], dtype=np.int32)

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes[:-1])}


def build_vocabularies(products: Iterable[Product], min_count: int = 20,
                       fields: Sequence[str] = ATTRIBUTE_FIELDS) -> dict[str, Vocabulary]:
    """Vocabularies from ``products`` (build them on the training split).

    A value seen fewer than ``min_count`` times joins ``"other"``: with 20, each kept class has
    enough training examples for a per-class accuracy that is not noise. Classes are ordered by
    frequency (ties by name), so index 0 is the majority class.
    """
    products = list(products)
    vocabularies = {}
    for name in fields:
        counts = Counter(getattr(p, name) for p in products if getattr(p, name) is not None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = tuple(v for v, n in ranked if n >= min_count and v != OTHER)
        merged = {v: n for v, n in ranked if v not in kept}
        vocabularies[name] = Vocabulary(name, (*kept, OTHER), merged)
    return vocabularies


@dataclass(frozen=True)
class ProductSplit:
    """Product ids (sorted) of each part; the parts are disjoint and cover the catalogue."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def part_of(self, product_id: int) -> str:
        for name in ("train", "valid", "test"):
            ids = getattr(self, name)
            position = np.searchsorted(ids, product_id)
            if position < len(ids) and ids[position] == product_id:
                return name
        raise UnknownKeyError(f"product {product_id} is in no part of the split")


def _unit_hash(seed: int, product_id: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, id): the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}:{product_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_products(products: Sequence[Product], fractions: tuple[float, float, float] = (0.8, 0.1,
                   0.1), seed: int = 0, stratify_by: str | None = None) -> ProductSplit:
    """Product-disjoint train/valid/test split, deterministic in ``seed``.

    Each product gets a hash of ``(seed, id)`` in [0, 1). Without ``stratify_by`` the hash alone
    places it (train below ``fractions[0]``, then valid, then test), so a product's part does not
    depend on which other products exist. With ``stratify_by`` (e.g. ``"article_type"``) the
    products of each value are ranked by hash and cut at the fractions, so every part holds
    each class in proportion (a class of one or two products lands in train).
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"fractions must be three non-negative numbers summing to 1, got "
                         f"{fractions}")
    groups: dict[object, list[Product]] = {}
    for p in products:
        groups.setdefault(getattr(p, stratify_by) if stratify_by else None, []).append(p)
    cut_train, cut_valid = fractions[0], fractions[0] + fractions[1]
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for members in groups.values():
        keyed = sorted((_unit_hash(seed, p.id), p.id) for p in members)
        for rank, (u, product_id) in enumerate(keyed):
            position = (rank + 0.5) / len(keyed) if stratify_by else u
            name = "train" if position < cut_train else "valid" if position < cut_valid else "test"
            parts[name].append(product_id)
    return ProductSplit(**{k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()})
