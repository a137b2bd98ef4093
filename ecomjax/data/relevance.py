"""Query-product relevance judgements: read, normalise, split by query.

The Home Depot file (``id,product_uid,product_title,search_term,relevance``, relevance a mean of
human grades in [1, 3]) is the reference format; any CSV or Parquet file with the columns
``query, product_id, title, relevance`` (or the Home Depot names) reads the same way. Every row
is checked: a missing column, an empty query or title, a non-numeric or out-of-range grade is an
error naming the file, the line and the value, never a silently dropped row. A CSV file must be
UTF-8 text; a grade is an ASCII decimal number (no ``nan``, no other scripts' digits).

A product may carry different titles on different rows (Home Depot's ``train.csv`` has 11 such
products, e.g. ``100540`` on lines 785 and 786): each row keeps the title that was judged, the
catalogue keeps the first, and ``RelevanceData.title_conflicts`` lists every such product with
the two lines, so it is reported rather than silently resolved.

Splits are *by query*: all rows of a query land on one side, so a model is scored on queries it
never saw, as a search engine is. Products may (and do) appear on both sides.
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecomjax.data.files import open_text, parse_float
from ecomjax.errors import DataFormatError, InputError

# canonical column -> accepted names in the file, first match wins
COLUMNS = {
    "query": ("query", "search_term"),
    "product_id": ("product_id", "product_uid"),
    "title": ("title", "product_title"),
    "relevance": ("relevance", "label"),
}


@dataclass(frozen=True)
class RelevanceData:
    """One row per judged (query, product) pair, plus the catalogue the file names."""

    queries: np.ndarray  # [n] object: the query text as typed
    product_ids: np.ndarray  # [n] object: product ids as strings
    titles: np.ndarray  # [n] object: product title of the row
    relevance: np.ndarray  # [n] float32 in [low, high]
    source: str = ""
    # product id -> (first line, first line with another title): rows keep their own title,
    # catalogue() the first one
    title_conflicts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.relevance)

    def subset(self, rows: np.ndarray) -> RelevanceData:
        return RelevanceData(self.queries[rows], self.product_ids[rows], self.titles[rows],
                             self.relevance[rows], self.source, self.title_conflicts)

    def catalogue(self) -> tuple[np.ndarray, np.ndarray]:
        """``(product_ids, titles)`` of each distinct product, in first-seen order."""
        _, first = np.unique(self.product_ids, return_index=True)
        first = np.sort(first)
        return self.product_ids[first], self.titles[first]

    def query_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """``(distinct queries, row -> query index)``, queries compared after normalisation."""
        keys = np.array([normalize_text(q) for q in self.queries], dtype=object)
        distinct, index = np.unique(keys, return_inverse=True)
        return distinct, index


_SPACE = re.compile(r"\s+")
_UNIT_DOT = re.compile(r"\b(in|ft|lb|lbs|oz|gal|cu|sq|mm|cm|qt|pt|yd|dia|no)\.", re.IGNORECASE)
_SPLIT_CASE = re.compile(r"(?<=[a-z])(?=[A-Z][a-z])")  # "GaugeAngle" -> "Gauge Angle" (merged crawls)


def normalize_text(text: str) -> str:
    """One normalisation for every model (lexical and neural see the same string).

    Unicode NFKC, camel-case joins split, unit abbreviation dots dropped (``1-gal.``, ``cu. ft.``), lower case,
    ``x`` between numbers spaced (``2x4`` -> ``2 x 4``), whitespace collapsed. Deliberately mild:
    the encoders have their own tokenizers and were pretrained on natural text.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _SPLIT_CASE.sub(" ", text)
    text = _UNIT_DOT.sub(r"\1", text).lower()
    text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", " x ", text)
    return _SPACE.sub(" ", text).strip()


def _column_index(header: list[str], path: Path) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    index = {}
    for name, options in COLUMNS.items():
        found = next((lowered.index(o) for o in options if o in lowered), None)
        if found is None:
            raise DataFormatError(f"{path}:1: no {name!r} column (accepted names: {list(options)}); "
                                  f"header is {header}")
        index[name] = found
    return index


def read_relevance(path: str | Path, *, low: float = 1.0, high: float = 3.0) -> RelevanceData:
    """Read a relevance file (``.csv`` or ``.parquet``); grades must lie in ``[low, high]``."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"{path}: reading Parquet needs pyarrow (a dependency of ecomjax): pip install pyarrow") from None

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataFormatError(f"{path}: not a readable Parquet file ({exc})") from None
        header = table.column_names
        index = _column_index(header, path)
        columns = {name: table.column(header[i]).to_pylist() for name, i in index.items()}
        rows = list(zip(*(columns[n] for n in COLUMNS), strict=True))
        lines = list(range(1, len(rows) + 1))  # Parquet rows are numbered from 1 in messages
    else:
        with open_text(path, newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
                if not header:
                    raise DataFormatError(f"{path}: empty file (expected a header line)")
                index = _column_index(header, path)
                rows, lines = [], []
                for row in reader:
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise DataFormatError(f"{path}:{reader.line_num}: expected {len(header)} comma-separated "
                                              f"fields ({', '.join(header)}), got {len(row)}")
                    rows.append(tuple(row[index[n]] for n in COLUMNS))
                    lines.append(reader.line_num)
            except csv.Error as exc:
                raise DataFormatError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    queries, products, titles, grades = [], [], [], []
    first_title: dict[str, tuple[str, int]] = {}
    conflicts: dict[str, tuple[int, int]] = {}
    for line, (query, product, title, grade) in zip(lines, rows, strict=True):
        where = f"{path}:{line}"
        query, product, title = str(query or "").strip(), str(product or "").strip(), str(title or "").strip()
        for name, value in (("query", query), ("product id", product), ("title", title)):
            if not value:
                raise DataFormatError(f"{where}: empty {name}")
        if isinstance(grade, int | float) and not isinstance(grade, bool):
            number = float(grade) if np.isfinite(grade) else None
        else:
            number = parse_float(str(grade).strip()) if isinstance(grade, str) else None
        if number is None:
            raise DataFormatError(f"{where}: relevance {grade!r} is not a number")
        grade = number
        if not low <= grade <= high:
            raise DataFormatError(f"{where}: relevance {grade} is outside [{low}, {high}]")
        seen_title, seen_line = first_title.setdefault(product, (title, line))
        if seen_title != title and product not in conflicts:
            conflicts[product] = (seen_line, line)
        queries.append(query)
        products.append(product)
        titles.append(title)
        grades.append(grade)
    if not grades:
        raise DataFormatError(f"{path}: no rows")
    return RelevanceData(np.array(queries, dtype=object), np.array(products, dtype=object),
                         np.array(titles, dtype=object), np.array(grades, dtype=np.float32), str(path),
                         conflicts)


def hash_fraction(key: str, salt: str | int) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``: split assignment that does not depend
    on file order, machine or Python's hash seed."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_query(data: RelevanceData, valid_fraction: float = 0.1, test_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of train / valid / test with every (normalised) query on one side only.

    Assignment hashes the normalised query with the seed: stable across machines and file
    orderings, and a row added to the file never moves another query across the split.
    """
    if not (0 <= valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise InputError(f"valid_fraction {valid_fraction} and test_fraction {test_fraction} must be "
                         "in [0, 1) and (0, 1) and sum to less than 1")
    distinct, index = data.query_groups()
    u = np.array([hash_fraction(q, seed) for q in distinct])
    side = np.where(u < test_fraction, 2, np.where(u < test_fraction + valid_fraction, 1, 0))
    row_side = side[index]
    return {name: np.flatnonzero(row_side == i) for i, name in enumerate(("train", "valid", "test"))}
