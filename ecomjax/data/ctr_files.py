"""Readers for public CTR / CVR log formats: Ali-CCP, AliExpress (multi-task) and Criteo.

Each format is a CSV with a header; what differs is which columns are labels, which are
numeric, and what identifies a user or a request. The conventions come from the published
samples (DeepCTR / torch-rechub for Ali-CCP, FuxiCTR for AliExpress, DeepCTR for Criteo):

* ``ali_ccp``: ``click, purchase``, then categorical fields named by number (``101`` is the
  user id, used for GAUC and as the list of NDCG) and dense fields ``D...``;
* ``aliexpress``: ``search_id`` (a request: GAUC and NDCG group by it), ``categorical_*``,
  ``numerical_*``, ``click, conversion``;
* ``criteo``: ``label`` (click only), ``I1..I13`` counts (missing -> 0, then
  ``sign(x) log(1 + |x|)``), ``C1..C26`` hashed categories (missing -> id 0).

Categorical values get ids from the *training* file in order of first appearance (1, 2, ...);
a value first seen in validation or test maps to 0, "unknown", and how many did is reported in
``ImpressionData.source``. Every row is checked: a wrong field count, a label that is not 0/1,
a number that does not parse (ASCII decimals only: no ``nan``, no ``inf``), an empty user or
request id (it would pool unrelated rows into one GAUC user or one NDCG list), or a purchase
without a click is an error naming file:line. Files must be UTF-8 text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecomjax.data.files import open_text, parse_float, resolve_data_path
from ecomjax.data.schema import CategoricalField, FeatureSchema, ImpressionData, split_by_group
from ecomjax.errors import DataFormatError, InputError


@dataclass(frozen=True)
class CtrFormat:
    click: str
    purchase: str | None
    is_numeric: Callable[[str], bool]
    user: str | None = None  # column whose value identifies the user (GAUC)
    group: str | None = None  # column identifying a request (a list for NDCG); not a feature
    log_numeric: bool = False  # counts: sign(x) log(1 + |x|)


FORMATS: dict[str, CtrFormat] = {
    "ali_ccp": CtrFormat("click", "purchase", lambda c: c.startswith("D"), user="101"),
    "aliexpress": CtrFormat("click", "conversion", lambda c: c.startswith("numerical_"), group="search_id"),
    "criteo": CtrFormat("label", None, lambda c: re.fullmatch(r"I\d+", c) is not None, log_numeric=True),
}


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class _Part:
    path: Path
    rows: list[list[str]]
    lines: list[int]  # line of each row in the file (blank lines are skipped)


def _read(path: Path, fmt: CtrFormat) -> tuple[list[str], _Part]:
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        try:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataFormatError(f"{path}: empty file (a header line is expected)") from None
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataFormatError(f"{path}:1: column(s) {repeated} appear more than once in the header")
            needed = [c for c in (fmt.click, fmt.purchase, fmt.user, fmt.group) if c]
            missing = [c for c in needed if c not in header]
            if missing:
                raise DataFormatError(f"{path}: missing column(s) {missing}; header has {header[:8]}...")
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataFormatError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise DataFormatError(f"{path}: no data rows")
    return header, _Part(path, rows, lines)


def _labels(part: _Part, column: int, name: str) -> np.ndarray:
    values = np.empty(len(part.rows), np.float32)
    for i, row in enumerate(part.rows):
        raw = row[column].strip()
        if raw not in ("0", "1", "0.0", "1.0"):
            raise DataFormatError(f"{part.path}:{part.lines[i]}: label {name!r} must be 0 or 1, got {raw!r}")
        values[i] = float(raw)
    return values


def _numbers(part: _Part, column: int, name: str, log: bool) -> np.ndarray:
    values = np.zeros(len(part.rows), np.float32)
    for i, row in enumerate(part.rows):
        raw = row[column].strip()
        if raw == "":
            continue  # missing -> 0
        value = parse_float(raw)
        if value is None:
            raise DataFormatError(f"{part.path}:{part.lines[i]}: numeric field {name!r} is not a number: {raw!r}")
        if abs(value) > _FLOAT32_MAX:
            raise DataFormatError(f"{part.path}:{part.lines[i]}: numeric field {name!r}: {raw!r} is "
                                  "outside the float32 range")
        values[i] = value
    return np.sign(values) * np.log1p(np.abs(values)) if log else values


def _ids(part: _Part, column: int, name: str) -> list[str]:
    """The user or request id of every row; an empty one is an error (it would join one group)."""
    values = [row[column].strip() for row in part.rows]
    for i, value in enumerate(values):
        if not value:
            raise DataFormatError(f"{part.path}:{part.lines[i]}: empty {name!r} (the user or request id "
                                  "that groups rows for GAUC and NDCG)")
    return values


def read_ctr_files(fmt_name: str, train: Path, others: dict[str, Path]) -> tuple[ImpressionData, dict[str, np.ndarray]]:
    """Read the training file and the other named files; rows concatenated, train first."""
    if fmt_name not in FORMATS:
        raise InputError(f"CTR file format {fmt_name!r} is unknown; formats: {sorted(FORMATS)}")
    fmt = FORMATS[fmt_name]
    header, train_part = _read(train, fmt)
    train_rows = train_part.rows
    parts = {"train": train_part}
    for name, path in others.items():
        other_header, part = _read(path, fmt)
        if other_header != header:
            raise DataFormatError(f"{path}: header differs from the training file {train}")
        parts[name] = part
    labels = {c for c in (fmt.click, fmt.purchase, fmt.group) if c}
    features = [c for c in header if c not in labels]
    numeric = [c for c in features if fmt.is_numeric(c)]
    categorical = [c for c in features if not fmt.is_numeric(c)]
    vocab: dict[str, dict[str, int]] = {c: {} for c in categorical}
    for row in train_rows:
        for c in categorical:
            value = row[header.index(c)].strip()
            if value and value not in vocab[c]:
                vocab[c][value] = len(vocab[c]) + 1
    unknown = 0
    blocks = []
    for part in parts.values():
        cat = np.zeros((len(part.rows), len(categorical)), np.int32)
        for j, c in enumerate(categorical):
            col, table = header.index(c), vocab[c]
            ids = [table.get(row[col].strip(), 0) for row in part.rows]
            cat[:, j] = ids
            if part.path != train:
                unknown += sum(1 for i, row in zip(ids, part.rows, strict=True) if i == 0 and row[col].strip())
        num = np.stack([_numbers(part, header.index(c), c, fmt.log_numeric) for c in numeric],
                       axis=1) if numeric else np.zeros((len(part.rows), 0), np.float32)
        click = _labels(part, header.index(fmt.click), fmt.click)
        purchase = _labels(part, header.index(fmt.purchase), fmt.purchase) if fmt.purchase else None
        if purchase is not None:
            bad = np.flatnonzero((purchase > 0) & (click == 0))
            if len(bad):
                raise DataFormatError(f"{part.path}:{part.lines[bad[0]]}: {fmt.purchase}=1 with {fmt.click}=0; "
                                      f"the funnel is click -> purchase ({len(bad)} such rows)")
        raw_user = _ids(part, header.index(fmt.user), fmt.user) if fmt.user else None
        raw_group = _ids(part, header.index(fmt.group), fmt.group) if fmt.group else None
        blocks.append((cat, num, click, purchase, raw_user, raw_group))
    n = sum(len(b[0]) for b in blocks)

    codes: dict[str, int] = {}  # user / request value -> stable id across the files

    def ids_of(values: list[str]) -> np.ndarray:
        return np.asarray([codes.setdefault(v.strip(), len(codes)) for v in values], np.int64)

    users, groups, offset = [], [], len(codes)
    for cat, _, _, _, raw_user, raw_group in blocks:
        rows_here = len(cat)
        users.append(ids_of(raw_user) if raw_user is not None else np.full(rows_here, -1, np.int64))
        group_values = raw_group if raw_group is not None else raw_user
        # no request ids: each row is its own list (NDCG over lists is then not defined)
        groups.append(ids_of(group_values) if group_values is not None
                      else -1 - np.arange(offset, offset + rows_here, dtype=np.int64))
        offset += rows_here
    schema = FeatureSchema(tuple(CategoricalField(c, len(vocab[c]) + 1) for c in categorical), tuple(numeric))
    data = ImpressionData(
        schema=schema, categorical=np.concatenate([b[0] for b in blocks]),
        numeric=np.concatenate([b[1] for b in blocks]).astype(np.float32),
        sequences=np.zeros((n, 0, 1), np.int32), click=np.concatenate([b[2] for b in blocks]),
        purchase=np.concatenate([b[3] for b in blocks]) if fmt.purchase else None, dwell=None,
        users=np.concatenate(users), groups=np.concatenate(groups),
        source=f"{fmt_name}:{train.name} ({unknown} categorical values unseen in training -> id 0)")
    bounds = np.cumsum([0] + [len(b[0]) for b in blocks])
    splits = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(parts)}
    return data.validate(), splits


def read_ctr_splits(cfg, seed: int) -> tuple[ImpressionData, dict[str, np.ndarray]]:
    """``RankerDataConfig`` -> data and train / valid / test rows (files, or request splits of
    the training file for the parts not given)."""
    if cfg.source not in FORMATS:
        raise DataFormatError(f"data.source {cfg.source!r} is not a file format; formats: {sorted(FORMATS)}")
    others = {name: resolve_data_path(p) for name, p in (("valid", cfg.valid_path), ("test", cfg.test_path)) if p}
    data, splits = read_ctr_files(cfg.source, resolve_data_path(cfg.path), others)
    missing = [name for name in ("valid", "test") if name not in splits]
    if missing:
        train_part = data.take(splits["train"])
        fractions = {"valid": cfg.valid_fraction if "valid" in missing else 0.0,
                     "test": cfg.test_fraction if "test" in missing else 0.0}
        inner = split_by_group(train_part, fractions["valid"], fractions["test"], seed)
        rows = splits["train"]
        splits["train"] = rows[inner["train"]]
        for name in missing:
            splits[name] = rows[inner[name]]
        if any(len(splits[name]) == 0 for name in missing):
            raise DataFormatError(f"{cfg.path}: too few requests to carve {missing} out of the training file; "
                                  "give data.valid_path / data.test_path")
    return data, {k: splits[k] for k in ("train", "valid", "test")}
