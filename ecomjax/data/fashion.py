"""Fashion Product Images (Myntra): products with a photo, a title and five attributes.

The catalogue behind the multimodal tasks: predict an attribute (article type, colour, usage,
season, gender) from image and text, and retrieve products for attribute queries. Four things
decide whether such results mean anything, and each has its function here:

- ``read_fashion_catalog`` validates every row (``file:line`` errors) and never drops a product
  silently: a product without a photo is an error, or an explicit ``missing_images`` list;
- ``clean_title`` removes colour words from titles, or the text model would read the colour
  off the title (``"Men Navy Blue Shirt"``) and the colour task would measure string matching;
- ``split_products`` is product-disjoint and deterministic, so no test product is trained on;
- ``compose_queries`` writes queries from templates and synonyms rather than titles, so
  retrieval is not won by copying words, and derives relevance from attributes alone.

Images are decoded on demand from the zip (Pillow), optionally through a small LRU cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from ecomjax.data.files import DataFormatError, resolve_data_path

DATASET_DIR = "fashion-products"
STYLES_FILE, IMAGES_FILE = "styles.csv", "images-128.zip"
COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season",
           "year", "usage", "productDisplayName")
_REQUIRED = ("gender", "masterCategory", "subCategory", "articleType", "productDisplayName")
_MISSING_VALUES = ("", "NA")  # the file writes an unknown colour or usage as "NA"
ATTRIBUTE_FIELDS = ("article_type", "base_colour", "usage", "season", "gender")
OTHER = "other"
MISSING = -1  # label of a product whose attribute is unknown: mask it out of losses and metrics


@dataclass(frozen=True)
class Product:
    """One catalogue row; optional attributes are ``None`` where the file says NA or nothing."""

    id: int
    gender: str
    master_category: str
    sub_category: str
    article_type: str
    base_colour: str | None
    season: str | None
    year: int | None
    usage: str | None
    title: str  # productDisplayName, as written (it names the colour: see ``clean_title``)


# ---------------------------------------------------------------------------- reading
def _optional(value: str) -> str | None:
    return None if value in _MISSING_VALUES else value


def read_styles(path: str | Path) -> list[Product]:
    """Parse ``styles.csv``; any malformed row raises ``DataFormatError`` naming file and line.

    Titles containing commas must be quoted: an unquoted comma shifts every later field, so a
    row with the wrong field count is an error, never repaired by guessing.
    """
    path = Path(path)
    products: list[Product] = []
    first_line: dict[int, int] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(COLUMNS):
            raise DataFormatError(f"{path}:1: header must be {','.join(COLUMNS)}, got {header}")
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(COLUMNS):
                raise DataFormatError(f"{path}:{line}: expected {len(COLUMNS)} fields, got "
                                      f"{len(row)} (quote titles that contain commas)")
            values = dict(zip(COLUMNS, (cell.strip() for cell in row), strict=True))
            for name in _REQUIRED:
                if not values[name]:
                    raise DataFormatError(f"{path}:{line}: missing {name}")
            if not (values["id"].isascii() and values["id"].isdigit()):
                raise DataFormatError(f"{path}:{line}: id {values['id']!r} is not an integer id")
            product_id = int(values["id"])
            if product_id in first_line:
                raise DataFormatError(f"{path}:{line}: id {product_id} already appeared on line "
                                      f"{first_line[product_id]}")
            first_line[product_id] = line
            year = values["year"]
            if year not in _MISSING_VALUES and not (year.isascii() and year.isdigit()):
                raise DataFormatError(f"{path}:{line}: year {year!r} is not an integer")
            products.append(Product(
                id=product_id, gender=values["gender"], master_category=values["masterCategory"],
                sub_category=values["subCategory"], article_type=values["articleType"],
                base_colour=_optional(values["baseColour"]), season=_optional(values["season"]),
                year=None if year in _MISSING_VALUES else int(year),
                usage=_optional(values["usage"]),
                title=values["productDisplayName"],
            ))
    if not products:
        raise DataFormatError(f"{path}: no products found")
    return products


class FashionCatalog:
    """Products in file order, plus their photos decoded from the zip when asked for.

    ``image_cache_size`` keeps that many decoded images (LRU; 128x128 RGB is 48 KiB each): a few
    thousand make repeated epochs over a subset cheap without holding the whole catalogue.
    """

    def __init__(self, products: Sequence[Product], images_path: Path, *,
                 missing_images: Sequence[int] = (), image_cache_size: int = 0):
        self.products = tuple(products)
        self.images_path = images_path
        self.missing_images = tuple(missing_images)  # ids listed in styles.csv without a photo
        self.image_cache_size = image_cache_size
        self._index = {p.id: i for i, p in enumerate(self.products)}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._archive: zipfile.ZipFile | None = None
        self._archive_pid = -1

    def __len__(self) -> int:
        return len(self.products)

    @property
    def ids(self) -> np.ndarray:
        return np.array([p.id for p in self.products], dtype=np.int64)

    def product(self, product_id: int) -> Product:
        return self.products[self._index[product_id]]

    def subset(self, ids: Iterable[int]) -> list[Product]:
        return [self.product(int(i)) for i in ids]

    def colours(self) -> tuple[str, ...]:
        """Every base colour of the catalogue: the words ``clean_title`` removes."""
        return colour_vocabulary(self.products)

    def clean_titles(self, products: Sequence[Product] | None = None) -> list[str]:
        """Titles without colour words (own colour and the catalogue's whole vocabulary)."""
        pattern = colour_pattern(self.colours())
        return [clean_title(p.title, p.base_colour, pattern=pattern)
                for p in (self.products if products is None else products)]

    def image(self, product_id: int) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB photo of a product (grey or RGBA files are converted)."""
        if product_id in self._cache:
            self._cache.move_to_end(product_id)
            return self._cache[product_id]
        if product_id not in self._index:
            raise KeyError(f"product {product_id} is not in the catalogue"
                           + (" (its image is missing)" if product_id in self.missing_images
                              else ""))
        from PIL import Image

        with Image.open(io.BytesIO(self._zip().read(f"{product_id}.jpg"))) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if self.image_cache_size > 0:
            pixels.flags.writeable = False  # shared by every caller of the cache
            self._cache[product_id] = pixels
            if len(self._cache) > self.image_cache_size:
                self._cache.popitem(last=False)
        return pixels

    def images(self, ids: Iterable[int]) -> np.ndarray:
        """``[N, H, W, 3]`` uint8 photos; all must share one size (they do in the 128 px zip)."""
        pixels = [self.image(int(i)) for i in ids]
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)}: resize before stacking")
        return np.stack(pixels)

    def _zip(self) -> zipfile.ZipFile:
        # One handle per process: grain workers fork, and a shared file offset would interleave.
        if self._archive is None or self._archive_pid != os.getpid():
            self._archive, self._archive_pid = zipfile.ZipFile(self.images_path), os.getpid()
        return self._archive

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def read_fashion_catalog(
    root: str | Path | None = None,
    *,
    missing_images: Literal["error", "report"] = "error",
    image_cache_size: int = 0,
) -> FashionCatalog:
    """Read ``styles.csv`` and index ``images-128.zip`` under ``root``.

    ``root`` defaults to ``$ECOMJAX_DATA_DIR/fashion-products``. A product whose photo is not in
    the zip raises (``missing_images="error"``), or (``"report"``) is left out of
    ``catalog.products`` and listed in ``catalog.missing_images`` for the caller to handle.
    Photos without a row are ignored: there is nothing to learn about them.
    """
    root = resolve_data_path(DATASET_DIR if root is None else root, directory=True, key="data.path")
    images_path = root / IMAGES_FILE
    if not images_path.is_file():
        raise FileNotFoundError(f"fashion catalogue: image archive {images_path} not found")
    products = read_styles(root / STYLES_FILE)
    with zipfile.ZipFile(images_path) as archive:
        names = set(archive.namelist())
    missing = [p.id for p in products if f"{p.id}.jpg" not in names]
    if missing and missing_images == "error":
        raise DataFormatError(f"{images_path}: no image for {len(missing)} products listed in "
                              f"{STYLES_FILE} (ids {missing[:10]}); pass missing_images='report'"
                              " to read the others")
    absent = set(missing)
    kept = [p for p in products if p.id not in absent]
    return FashionCatalog(kept, images_path, missing_images=missing,
                          image_cache_size=image_cache_size)


# ---------------------------------------------------------------------------- titles
# Title words that name a vocabulary colour without being one: short forms and misspellings.
EXTRA_COLOUR_WORDS = ("navy", "gray", "golden", "metalic", "multi coloured", "multi colored",
                      "multicoloured", "multicolored")


def colour_vocabulary(products: Iterable[Product]) -> tuple[str, ...]:
    return tuple(sorted({p.base_colour for p in products if p.base_colour}))


def colour_pattern(colours: Iterable[str]) -> re.Pattern:
    """One case-insensitive regex over whole colour words, multi-word colours tried first.

    Longer alternatives come first, so "Navy Blue" goes as a whole rather than leaving "Navy";
    words may be joined by spaces or hyphens ("Off-White").
    """
    names = {c.strip().lower() for c in colours if c and c.strip()} | set(EXTRA_COLOUR_WORDS)
    ordered = sorted(names, key=lambda c: (-len(c.split()), -len(c), c))
    alternatives = [r"[\s\-]+".join(re.escape(word) for word in c.split()) for c in ordered]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=256)
def _own_colour_pattern(colour: str) -> re.Pattern:
    return colour_pattern([colour])


def clean_title(title: str, own_colour: str | None = None, colours: Iterable[str] = (), *,
                pattern: re.Pattern | None = None) -> str:
    """``title`` without the product's own colour and any colour of ``colours`` (or ``pattern``).

    Brand names that contain a colour word lose it too ("Red Tape" -> "Tape"): the price of a
    guarantee that no colour word is left for the text model to read.
    """
    if own_colour:
        title = _own_colour_pattern(own_colour).sub(" ", title)
    title = (pattern or colour_pattern(colours)).sub(" ", title)
    title = re.sub(r"(?<![\w])[\-&/]+|[\-&/]+(?![\w])", " ", title)  # dangling joiners
    return " ".join(title.split())


# ---------------------------------------------------------------------------- vocabularies
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


# ---------------------------------------------------------------------------- split
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
        raise KeyError(f"product {product_id} is in no part of the split")


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
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got "
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


# ---------------------------------------------------------------------------- queries
# Phrases per attribute value: (before the noun, after the noun). Several per value, so a
# retrieval model must learn that "for him", "men's" and "mens" mean the same thing.
GENDER_PHRASES = {
    "Men": (("men's", "mens", "male"), ("for men", "for him", "for guys")),
    "Women": (("women's", "womens", "ladies'"), ("for women", "for her", "for ladies")),
    "Boys": (("boys'", "kids' boys"), ("for boys", "for a boy")),
    "Girls": (("girls'", "kids' girls"), ("for girls", "for a girl")),
    "Unisex": (("unisex", "gender-neutral"), ("for men and women", "for everyone")),
}
USAGE_PHRASES = {
    "Casual": (("casual", "everyday", "relaxed"), ("for everyday wear", "for daily use")),
    "Formal": (("formal", "office", "business"), ("for work", "for the office")),
    "Sports": (("sports", "athletic", "gym"), ("for workouts", "for the gym", "for training")),
    "Ethnic": (("ethnic", "traditional", "festive"), ("for festivals", "in traditional style")),
    "Smart Casual": (("smart casual", "semi-formal"), ("for smart casual wear",)),
    "Travel": (("travel",), ("for travel", "for trips")),
    "Party": (("party",), ("for parties", "for a night out")),
}
SEASON_PHRASES = {
    "Summer": (("summer", "warm-weather"), ("for summer", "for hot days")),
    "Winter": (("winter", "cold-weather"), ("for winter", "for the cold")),
    "Fall": (("fall", "autumn"), ("for autumn", "for fall")),
    "Spring": (("spring",), ("for spring",)),
}
COLOUR_SYNONYMS = {  # after the noun each becomes "in <colour>"
    "Black": ("black", "jet black"), "Grey": ("grey", "gray"), "Purple": ("purple", "violet"),
    "Navy Blue": ("navy", "navy blue", "dark blue"), "Beige": ("beige", "sand"),
    "Maroon": ("maroon", "wine"), "Olive": ("olive", "olive green"), "Gold": ("gold", "golden"),
    "Tan": ("tan", "camel"), "Charcoal": ("charcoal", "dark grey"),
    "Off White": ("off-white", "ecru"), "Multi": ("multicolour", "multi-coloured", "colourful"),
    "Magenta": ("magenta", "fuchsia"), "Lavender": ("lavender", "lilac"),
    "Coffee Brown": ("coffee", "dark brown"), "Turquoise Blue": ("turquoise", "aqua"),
    "Burgundy": ("burgundy", "oxblood"), "Grey Melange": ("heather grey", "grey melange"),
    "Fluorescent Green": ("neon green",), "Skin": ("skin-tone",),
    "Mustard": ("mustard", "mustard yellow"),
}
ARTICLE_SYNONYMS = {  # the noun; types not listed are named in lower case
    "Tshirts": ("t-shirt", "tee", "tshirt"), "Shirts": ("shirt", "button-down shirt"),
    "Casual Shoes": ("casual shoes", "sneakers"), "Tops": ("top", "blouse"),
    "Kurtas": ("kurta",), "Sports Shoes": ("sports shoes", "trainers", "running shoes"),
    "Watches": ("watch", "wristwatch"), "Handbags": ("handbag", "purse"),
    "Heels": ("heels", "high heels"), "Sunglasses": ("sunglasses", "shades"),
    "Sweaters": ("sweater", "jumper", "pullover"), "Sandals": ("sandals",),
    "Wallets": ("wallet",), "Flip Flops": ("flip-flops", "slippers"),
    "Sweatshirts": ("sweatshirt", "crewneck sweatshirt"), "Belts": ("belt",),
    "Trousers": ("trousers", "pants", "slacks"), "Formal Shoes": ("formal shoes", "dress shoes"),
    "Jeans": ("jeans", "denims"), "Socks": ("socks",), "Jackets": ("jacket",),
    "Flats": ("flats", "ballet flats"), "Backpacks": ("backpack", "school bag"),
    "Briefs": ("briefs", "underwear"), "Shorts": ("shorts",),
    "Innerwear Vests": ("vest", "undershirt"), "Caps": ("cap", "baseball cap"),
    "Track Pants": ("track pants", "joggers"), "Ties": ("tie", "necktie"), "Kurtis": ("kurti",),
    "Dresses": ("dress",), "Skirts": ("skirt",), "Scarves": ("scarf",),
    "Perfume and Body Mist": ("perfume", "body mist"), "Laptop Bag": ("laptop bag",),
}
OPENERS = ("", "", "", "looking for", "show me", "i need", "find", "buy")
QUERY_FIELDS = ("gender", "season", "usage", "base_colour")  # adjective order before the noun


def attribute_phrases(field_name: str, value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(before-noun, after-noun) phrases for one attribute value; unknown values in lower case."""
    if field_name == "base_colour":
        words = COLOUR_SYNONYMS.get(value, (value.lower(),))
        return words, tuple(f"in {w}" for w in words)
    table = {"gender": GENDER_PHRASES, "usage": USAGE_PHRASES, "season": SEASON_PHRASES}[field_name]
    return table.get(value, ((value.lower(),), (f"for {value.lower()}",)))


def render_query(attributes: dict[str, str], rng: np.random.Generator) -> str:
    """Query text for ``attributes`` (``article_type`` required) from random phrase choices.

    At most one attribute goes after the noun ("navy tee for him"), others before it in the
    usual adjective order; an opener ("show me") is added some of the time.
    """
    pre: list[tuple[int, str]] = []
    post: list[str] = []
    named = [f for f in QUERY_FIELDS if f in attributes]
    after = named[rng.integers(len(named))] if named and rng.random() < 0.5 else None
    for order, name in enumerate(named):
        before_forms, after_forms = attribute_phrases(name, attributes[name])
        if name == after:
            post.append(after_forms[rng.integers(len(after_forms))])
        else:
            pre.append((order, before_forms[rng.integers(len(before_forms))]))
    article = attributes["article_type"]
    nouns = ARTICLE_SYNONYMS.get(article, (article.lower(),))
    words = [OPENERS[rng.integers(len(OPENERS))], *(w for _, w in sorted(pre)),
             nouns[rng.integers(len(nouns))], *post]
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class AttributeQuery:
    """A retrieval query and its judged products (ids from the pool it was composed over).

    ``relevant`` (binary relevance) holds every pool product whose attributes equal all of the
    query's (exact values: a Unisex product does not answer a "men's" query). ``grades`` adds
    graded relevance for nDCG: 2 for the relevant products, 1 for near misses, i.e. the same
    article type with exactly one other query attribute different.
    """

    text: str
    attributes: dict[str, str]
    relevant: tuple[int, ...]
    grades: dict[int, int]


def compose_queries(pool: Sequence[Product], num_queries: int, seed: int = 0, *,
                    extra_attributes: tuple[int, int] = (1, 3)) -> list[AttributeQuery]:
    """Up to ``num_queries`` distinct attribute queries over ``pool``, deterministic in ``seed``.

    Pass the test products as ``pool`` so that queries and relevance only involve held-out
    products. Each query starts from a random pool product: its article type plus
    ``extra_attributes`` (inclusive range) of its known gender/season/usage/colour; so every
    query has at least one relevant product. Combinations already drawn are skipped; a pool with
    fewer distinct combinations yields fewer queries.
    """
    products = sorted(pool, key=lambda p: p.id)
    if not products:
        raise ValueError("compose_queries: empty pool")
    ids = np.array([p.id for p in products], dtype=np.int64)
    columns = {name: np.array([getattr(p, name) for p in products], dtype=object)
               for name in ("article_type", *QUERY_FIELDS)}
    rng = np.random.default_rng(seed)
    queries: list[AttributeQuery] = []
    seen: set[frozenset] = set()
    for _ in range(50 * num_queries):
        if len(queries) == num_queries:
            break
        anchor = products[rng.integers(len(products))]
        known = [f for f in QUERY_FIELDS if getattr(anchor, f) is not None]
        low, high = min(extra_attributes[0], len(known)), min(extra_attributes[1], len(known))
        chosen = rng.choice(len(known), size=rng.integers(low, high + 1), replace=False)
        attributes = {"article_type": anchor.article_type}
        attributes |= {known[i]: getattr(anchor, known[i]) for i in sorted(chosen)}
        key = frozenset(attributes.items())
        if key in seen:
            continue
        seen.add(key)
        same_type = columns["article_type"] == attributes["article_type"]
        misses = sum((columns[f] != v).astype(int) for f, v in attributes.items()
                     if f != "article_type")
        full, near = same_type & (misses == 0), same_type & (misses == 1)
        grades = {int(i): 2 for i in ids[full]} | {int(i): 1 for i in ids[near]}
        queries.append(AttributeQuery(render_query(attributes, rng), attributes,
                                      tuple(int(i) for i in ids[full]), grades))
    return queries
