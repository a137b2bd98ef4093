"""Fashion Product Images (Myntra): products with a photo, a title and five attributes.

The catalogue behind the multimodal tasks: predict an attribute (article type, colour, usage,
season, gender) from image and text, and retrieve products for attribute queries. Four things
decide whether such results mean anything, and each has its function here:

- ``read_fashion_catalog`` validates every row (``file:line`` errors) and never drops a product
  silently: a product without a photo is an error, or an explicit ``missing_images`` list;
- ``clean_title`` removes colour words from titles, or the text model would read the colour
  off the title (``"Men Navy Blue Shirt"``) and the colour task would measure string matching;
- ``split_products`` (``ecomjax.data.fashion_splits``) is product-disjoint and deterministic, so
  no test product is trained on;
- ``compose_queries`` (``ecomjax.data.fashion_queries``) writes queries from templates and
  synonyms rather than titles, so retrieval is not won by copying words, and derives relevance
  from attributes alone.

Images are decoded on demand from the zip (Pillow), optionally through a small LRU cache.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from ecomjax.data.files import INT64_MAX, open_text, parse_id, resolve_data_path
from ecomjax.errors import DataFormatError, InputError, MissingFileError, UnknownKeyError

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
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != list(COLUMNS):
                raise DataFormatError(f"{path}:1: header must be {','.join(COLUMNS)}, got {header}")
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
        for line, row in rows:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(COLUMNS):
                raise DataFormatError(f"{path}:{line}: expected {len(COLUMNS)} fields, got "
                                      f"{len(row)} (quote titles that contain commas)")
            values = dict(zip(COLUMNS, (cell.strip() for cell in row), strict=True))
            for name in _REQUIRED:
                if not values[name]:
                    raise DataFormatError(f"{path}:{line}: missing {name}")
            product_id = parse_id(values["id"], f"{path}:{line}", "id", high=INT64_MAX)
            if product_id in first_line:
                raise DataFormatError(f"{path}:{line}: id {product_id} already appeared on line "
                                      f"{first_line[product_id]}")
            first_line[product_id] = line
            year = values["year"]
            if year not in _MISSING_VALUES:
                parse_id(year, f"{path}:{line}", "year", high=9999)
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
            raise UnknownKeyError(f"product {product_id} is not in the catalogue"
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
            raise InputError(f"images of different sizes {sorted(shapes)}: resize before stacking")
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
        raise MissingFileError(f"fashion catalogue: image archive {images_path} not found")
    products = read_styles(root / STYLES_FILE)
    try:
        with zipfile.ZipFile(images_path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFormatError(f"{images_path}: not a readable zip archive ({exc})") from None
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
