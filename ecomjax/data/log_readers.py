"""Readers of interaction logs in the formats users have: every one returns an ``InteractionLog``.

* ``sequences``: ``user item item ...`` per line (``read_sequence_file``, unchanged);
* ``pairs``: ``user item`` per line, each user's interactions in file order (SASRec's own data
  files);
* ``delimited``: CSV / TSV / any single-character delimiter, with a header line or without one
  (columns are then named by their 0-based position, ``"0"``, ``"1"``, ...);
* ``parquet``: a Parquet file (or a directory of them, read in name order);
* ``recbole``: RecBole atomic ``.inter`` files (tab-separated, header ``name:type``).

Which column is the user, item, timestamp, rating, behaviour or session is the config's
``data.columns``; a mapped column that the file lacks is an error naming the key and listing the
columns there are. Values are checked as they are read: an empty id, a timestamp that is neither
a number nor an ISO date, a rating that is not a finite number names the file and line (Parquet:
row group and row). Timestamps are numbers in the file's own unit, or dates / date-times that
become seconds since 1970 (UTC).

pyarrow does the parsing (the C++ CSV and Parquet readers), so a log of millions of rows reads
in seconds; the line of a bad value is found only when there is one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecomjax.data.files import open_text, read_text
from ecomjax.data.interactions import InteractionLog, from_dataset, ids_from_strings
from ecomjax.data.sequences import read_sequence_file
from ecomjax.errors import DataFormatError, InputError

FORMATS = ("sequences", "pairs", "delimited", "parquet", "recbole")
ROLES = ("user", "item", "time", "rating", "behavior", "session")


@dataclass(frozen=True)
class ColumnMap:
    """Column of each role (None = the source has none); ``user`` may be None when sequences
    are sessions."""

    user: str | None
    item: str
    time: str | None = None
    rating: str | None = None
    behavior: str | None = None
    session: str | None = None

    def used(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


def read_log(path: Path, fmt: str, columns: ColumnMap | None, *, delimiter: str = ",", header: bool = True) -> InteractionLog:
    """The interactions of ``path`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "sequences":
        return from_dataset(read_sequence_file(path))
    if fmt == "pairs":
        return read_pairs(path)
    if fmt == "delimited":
        return read_delimited(path, columns or ColumnMap("0" if not header else "user", "1" if not header else "item"),
                              delimiter=delimiter, header=header)
    if fmt == "recbole":
        return read_recbole(path, columns)
    if fmt == "parquet":
        return read_parquet(path, columns or ColumnMap("user", "item"))
    raise InputError(f"data.format={fmt!r}; expected one of {list(FORMATS)}")


def read_pairs(path: Path) -> InteractionLog:
    """``user item`` lines (whitespace separated); blank lines carry nothing."""
    users: list[str] = []
    items: list[str] = []
    rows: list[int] = []
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2:
                hint = " (a 'user item item ...' file is data.format=sequences)" if len(tokens) > 2 else ""
                raise DataFormatError(f"{path}:{line_no}: expected 'user item', got {len(tokens)} fields{hint}")
            users.append(tokens[0])
            items.append(tokens[1])
            rows.append(line_no)
    if not rows:
        raise DataFormatError(f"{path}: no interactions found")
    return InteractionLog(users=ids_from_strings(np.array(users)), items=ids_from_strings(np.array(items)),
                          rows=np.array(rows, dtype=np.int64), source=str(path), name=path.stem)


def read_delimited(path: Path, columns: ColumnMap, *, delimiter: str = ",", header: bool = True,
                   strip_types: bool = False) -> InteractionLog:
    """A CSV / TSV log. ``strip_types`` drops RecBole's ``:type`` suffixes from header names."""
    import pyarrow.csv as pa_csv

    if len(delimiter) != 1:
        raise InputError(f"data.delimiter={delimiter!r}: one character such as ',', ';', '|' or a tab "
                         '(written "\\t", in double quotes)')
    read_text(path)  # UTF-8 (no NUL, no UTF-16): the same message as every other reader
    names = _header(path, delimiter) if header else None
    if names is not None and strip_types:
        names = [n.split(":", 1)[0] for n in names]
    if names is None:
        names = [str(i) for i in range(len(_header(path, delimiter) or []))]
    _check_columns(path, columns, names)
    wanted = list(dict.fromkeys(columns.used().values()))
    bad_rows: list[tuple] = []

    def invalid(row) -> str:
        bad_rows.append((row.number, row.actual_columns, row.text))
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1 if header else 0, use_threads=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid),
            convert_options=pa_csv.ConvertOptions(include_columns=wanted,
                                                  column_types={name: pa.string() for name in wanted}),
        )
    except pa.ArrowInvalid as error:
        raise DataFormatError(f"{path}: not a {delimiter!r}-delimited file: {error}") from None
    if bad_rows:
        number, actual, text = bad_rows[0]
        line = number if number is not None else _line_of_text(path, text)
        raise DataFormatError(f"{path}:{line}: expected {len(names)} fields, got {actual}: {text[:80]!r}")
    where = _CsvLines(path, header)
    return _log_from_table(table, columns, where, str(path), path.stem)


def read_recbole(path: Path, columns: ColumnMap | None) -> InteractionLog:
    """A RecBole atomic ``.inter`` file: tab-separated, header ``user_id:token item_id:token
    rating:float timestamp:float`` (any subset beyond user and item). Without ``data.columns``
    the standard names are used, with the rating and timestamp when the file has them."""
    if columns is None:
        names = [n.split(":", 1)[0] for n in (_header(path, "\t") or [])]
        columns = ColumnMap("user_id", "item_id", time="timestamp" if "timestamp" in names else None,
                            rating="rating" if "rating" in names else None)
    return read_delimited(path, columns, delimiter="\t", header=True, strip_types=True)


def read_parquet(path: Path, columns: ColumnMap) -> InteractionLog:
    """A Parquet file, or a directory of ``*.parquet`` files read in name order."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataFormatError(f"{path}: a directory with no *.parquet files")
    tables = []
    for file in files:
        try:
            meta = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"{file}: not a Parquet file ({error})") from None
        _check_columns(file, columns, meta.schema_arrow.names)
        tables.append((file, meta.read(columns=list(dict.fromkeys(columns.used().values())))))
    logs = [_log_from_table(table, columns, _ParquetRows(file), str(path), path.stem) for file, table in tables]
    if len(logs) == 1:
        return logs[0]
    offsets = np.cumsum([0] + [len(log) for log in logs])
    return InteractionLog(**{
        role: None if getattr(logs[0], role) is None else np.concatenate([getattr(log, role) for log in logs])
        for role in ("users", "items", "times", "ratings", "behaviors", "sessions")
    }, rows=np.concatenate([log.rows + offsets[i] for i, log in enumerate(logs)]), source=str(path), name=path.stem)


# --- shared ---------------------------------------------------------------------------------


def _header(path: Path, delimiter: str) -> list[str] | None:
    """The first line's fields (the file was checked to be UTF-8 by ``read_text`` already)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle, delimiter=delimiter), None)


def _check_columns(path: Path, columns: ColumnMap, names: list[str]) -> None:
    for role, column in columns.used().items():
        if column not in names:
            raise InputError(f"data.columns.{role}: column {column!r} is not in {path} (columns: {names})")


class _CsvLines:
    """Data row -> ``file:line``, counted only when a message needs it (blank lines skipped)."""

    def __init__(self, path: Path, header: bool):
        self.path, self.header = path, header

    def __call__(self, row: int) -> str:
        seen = -1 if self.header else 0
        with open_text(self.path, newline="") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    if seen == row:
                        return f"{self.path}:{line_no}"
                    seen += 1
        return f"{self.path}: data row {row + 1}"


class _ParquetRows:
    """Row -> ``file: row group g, row r``."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, row: int) -> str:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path).metadata
        for group in range(meta.num_row_groups):
            size = meta.row_group(group).num_rows
            if row < size:
                return f"{self.path}: row group {group}, row {row}"
            row -= size
        return f"{self.path}: row {row}"


def _line_of_text(path: Path, text: str) -> str:
    with open_text(path, newline="") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == text:
                return str(line_no)
    return "?"


def _log_from_table(table: pa.Table, columns: ColumnMap, where, source: str, name: str) -> InteractionLog:
    if table.num_rows == 0:
        raise DataFormatError(f"{source}: no interactions found")
    mapped = columns.used()
    values = {role: _strings(table.column(column), role, column, where) for role, column in mapped.items()
              if role in ("user", "item", "session", "behavior")}
    return InteractionLog(
        users=ids_from_strings(values["user"]) if "user" in values else np.zeros(table.num_rows, np.int64),
        items=ids_from_strings(values["item"]),
        rows=np.arange(table.num_rows, dtype=np.int64),
        times=_times(table.column(mapped["time"]), mapped["time"], where) if "time" in mapped else None,
        ratings=_ratings(table.column(mapped["rating"]), mapped["rating"], where) if "rating" in mapped else None,
        behaviors=values.get("behavior"),
        sessions=ids_from_strings(values["session"]) if "session" in values else None,
        source=source,
        name=name,
    )


def _strings(column: pa.ChunkedArray, role: str, name: str, where) -> np.ndarray:
    column = pc.cast(column, pa.string()) if column.type != pa.string() else column
    stripped = pc.utf8_trim_whitespace(column)
    empty = pc.or_kleene(pc.is_null(stripped), pc.equal(stripped, ""))
    if pc.any(empty).as_py():
        row = int(pc.index(empty, True).as_py())
        raise DataFormatError(f"{where(row)}: empty {role} (column {name!r})")
    return stripped.to_numpy(zero_copy_only=False).astype(str)


def _times(column: pa.ChunkedArray, name: str, where) -> np.ndarray:
    """Numbers as they are; dates and date-times as seconds since 1970 UTC."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        numbers = pc.cast(column, pa.float64())
    else:
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        try:
            numbers = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            try:
                numbers = pc.cast(pc.cast(pc.cast(text, pa.timestamp("s")), pa.int64()), pa.float64())
            except pa.ArrowInvalid:
                raise DataFormatError(f"{where(_first_bad_time(text))}: timestamp (column {name!r}) is neither a "
                                      "number nor an ISO date / date-time") from None
    return _finite(numbers, "timestamp", name, where)


def _first_bad_time(text: pa.ChunkedArray) -> int:
    for row, value in enumerate(text.to_pylist()):
        try:
            pa.array([value]).cast(pa.float64())
        except pa.ArrowInvalid:
            try:
                pa.array([value]).cast(pa.timestamp("s"))
            except pa.ArrowInvalid:
                return row
    return 0


def _ratings(column: pa.ChunkedArray, name: str, where) -> np.ndarray:
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    try:
        numbers = pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        for row, value in enumerate(text.to_pylist()):
            try:
                pa.array([value]).cast(pa.float64())
            except pa.ArrowInvalid:
                raise DataFormatError(f"{where(row)}: rating {value!r} (column {name!r}) is not a number") from None
        raise
    return _finite(numbers, "rating", name, where)


def _finite(numbers: pa.ChunkedArray, what: str, name: str, where) -> np.ndarray:
    array = numbers.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise DataFormatError(f"{where(int(bad[0]))}: {what} (column {name!r}) is empty or not finite")
    return array
