"""Out-of-core preparation: a log larger than memory becomes sequence shards in bounded memory.

The same steps as the in-memory path (``preprocess``), in passes whose memory does not grow with
the log, only with the id maps:

1. **scan**: the log is read in blocks (pyarrow's streaming CSV reader, Parquet row groups); each
   interaction gets its global row number (the tie rule's file order) and goes to one of ``B``
   bucket files by a stable hash of its sequence key (user, or session), so a user's whole
   history lands in one bucket; the minimum rating is applied here;
2. **per bucket**: one bucket at a time is loaded and cleaned exactly as the in-memory path cleans
   a whole log (duplicates, chronological order with ties in file order, sessions from a gap,
   consecutive repeats): a bucket holds whole sequences, so the result is the same;
3. **k-core**: rounds over the buckets with a global item count (the only cross-bucket state) until
   no sequence and no item falls below its minimum;
4. **shards**: the item id map (dense ids in increasing order of the original id, as in memory) is
   applied and each bucket is written as one Parquet shard of whole sequences
   (``sequence``, ``items``, and ``times`` when the log has them), with ``item_ids.npy``,
   ``data_report.json`` and ``manifest.json`` beside them.

``B`` comes from the log's size (``bucket_bytes`` of input per bucket), so peak memory is about one
bucket whatever the log's length. Each training process then reads only its own shards
(``shard_pipeline``).
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecomjax.data.interactions import InteractionLog, first_appearance_codes, ids_from_strings
from ecomjax.data.log_readers import ColumnMap, _ratings, _times
from ecomjax.data.preprocess import PreprocessConfig, preprocess
from ecomjax.errors import DataFormatError, InputError

BUCKET_BYTES = 64 << 20  # input bytes per bucket: a bucket loads in a few hundred MB
BLOCK_BYTES = 16 << 20  # CSV block read at a time


def prepare_shards(path: str | Path, out: str | Path, columns: ColumnMap, steps: PreprocessConfig, *,
                   fmt: str = "delimited", delimiter: str = ",", header: bool = True, bucket_bytes: int = BUCKET_BYTES,
                   num_buckets: int | None = None) -> dict[str, Any]:
    """Prepare the log at ``path`` into shards under ``out`` (created; must not hold shards)."""
    path, out = Path(path), Path(out)
    if (out / "manifest.json").exists():
        raise InputError(f"{out} already holds prepared shards; remove it or choose another directory")
    if fmt not in ("delimited", "parquet"):
        raise InputError(f"out-of-core preparation reads delimited or parquet logs, not {fmt!r}")
    if steps.session_gap is not None and columns.session is not None:
        raise InputError("data.preprocess.session_gap builds sessions from users; the log already has "
                         "data.columns.session")
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.parquet"))
    buckets = num_buckets or max(1, math.ceil(size / bucket_bytes))
    work = out / "_buckets"
    work.mkdir(parents=True, exist_ok=True)
    key_role = "session" if columns.session is not None else "user"
    read, kept = _scan(path, fmt, columns, delimiter, header, steps, key_role, buckets, work)
    per_bucket = replace(steps, min_rating=None, min_user_interactions=0, min_item_interactions=0)
    items = np.array([], dtype=np.int64)
    bucket_reports = []
    for b in range(buckets):
        log = _read_bucket(work / f"raw-{b:05d}.parquet", columns, path)
        if log is None:
            continue
        log, report = preprocess(log, per_bucket)
        bucket_reports.append(report)
        _write_log(log, work / f"clean-{b:05d}.parquet")
        items = np.union1d(items, log.items) if len(items) else np.unique(log.items)
    alive, rounds = None, 0
    if steps.min_user_interactions or steps.min_item_interactions:
        while True:
            rounds += 1
            counts = [kv for b in range(buckets) for kv in _k_core_round(work, b, alive, steps.min_user_interactions)]
            new_alive = _alive_items(counts, steps.min_item_interactions, items.dtype)
            if alive is not None and len(new_alive) == len(alive):
                break
            alive = new_alive
    item_ids = alive if alive is not None else items
    if len(item_ids) == 0:
        raise DataFormatError(f"{path}: no interactions left after preparation")
    written = [_write_shard(work, out, b, item_ids, alive, steps.min_user_interactions) for b in range(buckets)]
    final = {"interactions": sum(w[0] for w in written), "sequences": sum(w[1] for w in written),
             "items": len(item_ids)}
    report = bucket_report(path, fmt, read, kept, steps, bucket_reports, rounds, final, buckets, key_role)
    np.save(out / "item_ids.npy", np.concatenate([np.array([-1 if item_ids.dtype.kind in "iu" else ""],
                                                           dtype=item_ids.dtype), item_ids]))
    (out / "data_report.json").write_text(json.dumps(report, indent=1))
    manifest = {"shards": [f"shard-{b:05d}.parquet" for b in range(buckets)], **final,
                "has_times": columns.time is not None, "preprocess": asdict(steps)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(work)
    return report


# --- pass 1: scan into buckets ------------------------------------------------------------------


def _batches(path: Path, fmt: str, names: list[str], delimiter: str, header: bool):
    """Record batches of the wanted columns, in file order."""
    if fmt == "parquet":
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for file in files:
            yield from pq.ParquetFile(file).iter_batches(columns=names, batch_size=1 << 20)
        return
    import pyarrow.csv as pa_csv

    parse = pa_csv.ParseOptions(delimiter=delimiter)
    present = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16, autogenerate_column_names=not header),
                              parse_options=parse).schema.names
    if not header:  # columns are named by position, as in the in-memory reader
        present = [str(i) for i in range(len(present))]
    missing = [n for n in names if n not in present]
    if missing:
        raise InputError(f"data.columns: column {missing[0]!r} is not in {path} (columns: {present})")
    read_options = pa_csv.ReadOptions(block_size=BLOCK_BYTES, column_names=None if header else present)
    reader = pa_csv.open_csv(path, read_options=read_options, parse_options=parse,
                             convert_options=pa_csv.ConvertOptions(include_columns=names))
    try:
        yield from reader
    except pa.ArrowInvalid as error:
        raise DataFormatError(f"{path}: {error}") from None


def _scan(path: Path, fmt: str, columns: ColumnMap, delimiter: str, header: bool, steps: PreprocessConfig, key_role: str,
          buckets: int, work: Path) -> tuple[int, int]:
    used = columns.used()
    names = list(dict.fromkeys(used.values()))
    writers: dict[int, pq.ParquetWriter] = {}
    read = kept = 0
    try:
        for batch in _batches(path, fmt, names, delimiter, header):
            table = validated_batch(pa.Table.from_batches([batch]), columns,
                                    lambda row, offset=read: f"{path}: data row {offset + row + 1}")
            table = table.append_column("_row", pa.array(np.arange(read, read + len(table), dtype=np.int64)))
            read += len(table)
            if steps.min_rating is not None:
                table = table.filter(pc.greater_equal(pc.cast(table.column(used["rating"]), pa.float64()),
                                                      steps.min_rating))
            kept += len(table)
            bucket = _bucket_of(table.column(used[key_role]), buckets)
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in range(buckets):
                if bounds[b] == bounds[b + 1]:
                    continue
                part = table.take(pa.array(order[bounds[b]:bounds[b + 1]]))
                if b not in writers:
                    writers[b] = pq.ParquetWriter(work / f"raw-{b:05d}.parquet", part.schema)
                writers[b].write_table(part.cast(writers[b].schema))
    finally:
        for writer in writers.values():
            writer.close()
    if read == 0:
        raise DataFormatError(f"{path}: no interactions found")
    return read, kept


def validated_batch(table: pa.Table, columns: ColumnMap, where) -> pa.Table:
    """A scanned block checked as the in-memory readers check a file (no empty id or behaviour,
    timestamps and ratings finite numbers or dates), with timestamps and ratings as float64;
    ``where(row)`` names a row of the block in messages."""
    used = columns.used()
    for role in ("user", "item", "session", "behavior"):
        if role in used:
            column = table.column(used[role])
            empty = pc.is_null(column)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                empty = pc.or_kleene(empty, pc.equal(pc.utf8_trim_whitespace(column), ""))
            if pc.any(empty).as_py():
                raise DataFormatError(f"{where(int(pc.index(empty, True).as_py()))}: empty {role} "
                                      f"(column {used[role]!r})")
    for role, convert in (("time", _times), ("rating", _ratings)):
        if role in used:
            index = table.schema.get_field_index(used[role])
            table = table.set_column(index, used[role], pa.array(convert(table.column(used[role]), used[role], where)))
    return table


def _bucket_of(keys: pa.ChunkedArray, buckets: int) -> np.ndarray:
    """A stable hash of each key (the same in every process and run), modulo ``buckets``."""
    if pa.types.is_integer(keys.type):
        x = keys.to_numpy().astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return ((x ^ (x >> np.uint64(31))) % np.uint64(buckets)).astype(np.int64)
    strings = pc.cast(keys, pa.string()).to_pylist()
    return np.fromiter((zlib.crc32(s.encode()) % buckets for s in strings), dtype=np.int64, count=len(strings))


# --- pass 2: clean each bucket ------------------------------------------------------------------


def _read_bucket(file: Path, columns: ColumnMap, source: Path) -> InteractionLog | None:
    if not file.exists():
        return None
    table = pq.read_table(file)
    used = columns.used()

    def column(role, kind):
        if role not in used:
            return None
        values = table.column(used[role])
        if kind == "id":
            return ids_from_strings(values.to_numpy(zero_copy_only=False))
        if kind == "float":
            return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        return values.to_numpy(zero_copy_only=False).astype(str)

    rows = table.column("_row").to_numpy()
    return InteractionLog(users=column("user", "id") if "user" in used else np.zeros(len(rows), np.int64),
                          items=column("item", "id"), rows=rows, times=column("time", "float"),
                          ratings=None, behaviors=column("behavior", "str"), sessions=column("session", "id"),
                          source=str(source), name=source.stem)


def _write_log(log: InteractionLog, file: Path) -> None:
    codes, keys = first_appearance_codes(log.keys)
    data = {"key": pa.array(keys[codes]), "item": pa.array(log.items), "row": pa.array(log.rows)}
    if log.times is not None:
        data["time"] = pa.array(log.times)
    if log.behaviors is not None:
        data["behavior"] = pa.array(log.behaviors)
    pq.write_table(pa.table(data), file)


# --- pass 3: k-core over buckets ------------------------------------------------------------------


def _k_core_round(work: Path, bucket: int, alive: np.ndarray | None, min_sequence: int):
    """One bucket's ``(item, interactions)`` after one k-core round: items still alive, then
    sequences long enough (the only state that crosses buckets is the item counts)."""
    file = work / f"clean-{bucket:05d}.parquet"
    if not file.exists():
        return []
    table = pq.read_table(file, columns=["key", "item"])
    keys = table.column("key").to_numpy(zero_copy_only=False)
    items = table.column("item").to_numpy(zero_copy_only=False)
    unique, counts = np.unique(items[_surviving(keys, items, alive, min_sequence)], return_counts=True)
    return list(zip(unique.tolist(), counts.tolist(), strict=True))


def _alive_items(counts: list[tuple[Any, int]], min_item: int, dtype) -> np.ndarray:
    total: dict[Any, int] = {}
    for item, count in counts:
        total[item] = total.get(item, 0) + count
    return np.sort(np.array([item for item, count in total.items() if count >= min_item], dtype=dtype))


def _surviving(keys: np.ndarray, items: np.ndarray, alive: np.ndarray | None, min_sequence: int) -> np.ndarray:
    """Interactions kept by one k-core round: item alive, then the sequence long enough."""
    keep = np.ones(len(items), dtype=bool) if alive is None else np.isin(items, alive)
    codes, _ = first_appearance_codes(keys)
    lengths = np.bincount(codes[keep], minlength=codes.max(initial=-1) + 1)
    return keep & (lengths[codes] >= min_sequence)


# --- pass 4: shards ---------------------------------------------------------------------------------


def _write_shard(work: Path, out: Path, bucket: int, item_ids: np.ndarray, alive: np.ndarray | None,
                 min_sequence: int) -> tuple[int, int]:
    """Bucket ``bucket`` as its shard (whole sequences, global dense item ids): ``(interactions,
    sequences)`` written."""
    file, shard = work / f"clean-{bucket:05d}.parquet", out / f"shard-{bucket:05d}.parquet"
    table = pq.read_table(file) if file.exists() else None
    if table is not None:
        keys = table.column("key").to_numpy(zero_copy_only=False)
        items = table.column("item").to_numpy(zero_copy_only=False)
        keep = _surviving(keys, items, alive, min_sequence) if alive is not None else np.ones(len(items), bool)
        keys, items = keys[keep], items[keep]
        times = table.column("time").to_numpy()[keep] if "time" in table.column_names else None
    if table is None or len(items) == 0:
        pq.write_table(pa.table({"sequence": pa.array([], pa.string()), "items": pa.array([], pa.list_(pa.int32()))}),
                       shard)
        return 0, 0
    codes, names = first_appearance_codes(keys)  # rows are already grouped by key, in order
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1, len(codes)].astype(np.int32)
    dense = (np.searchsorted(item_ids, items) + 1).astype(np.int32)
    data = {"sequence": pa.array(names.astype(str)), "items": pa.ListArray.from_arrays(pa.array(starts), pa.array(dense))}
    if times is not None:
        data["times"] = pa.ListArray.from_arrays(pa.array(starts), pa.array(times))
    pq.write_table(pa.table(data), shard, row_group_size=65536)
    return len(dense), len(names)


def bucket_report(path: Path, fmt: str, read: int, kept: int, steps: PreprocessConfig, bucket_reports: list[dict],
                  rounds: int, final: dict[str, int], buckets: int, key_role: str) -> dict[str, Any]:
    """``data_report.json`` of a bucketed preparation: the per-bucket step counts summed."""
    bucket_reports = [r for r in bucket_reports if r]
    entries: list[dict[str, Any]] = [{"step": "read", "interactions": read}]
    if steps.min_rating is not None:
        entries.append({"step": f"min_rating {steps.min_rating:g}", "interactions": kept})
    for name in [s["step"] for s in bucket_reports[0]["steps"][1:]] if bucket_reports else []:
        rows = [next(s for s in r["steps"] if s["step"] == name) for r in bucket_reports]
        entry = {"step": name, "interactions": sum(s["interactions"] for s in rows)}
        if name == "chronological order":
            entry["equal_timestamp_ties"] = sum(s["equal_timestamp_ties"] for s in rows)
        entries.append(entry)
    if steps.min_user_interactions or steps.min_item_interactions:
        entries.append({"step": f"k-core (sequences >= {steps.min_user_interactions}, items >= "
                                f"{steps.min_item_interactions})", "rounds": rounds, **final})
    ranges = [r["time_range"] for r in bucket_reports if r.get("time_range")]
    return {"source": str(path), "format": fmt, "steps": entries,
            "time_range": [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
            "tie_rule": "equal timestamps within a sequence keep their order in the file (stable sort)",
            "sequences_are": "sessions" if key_role == "session" or steps.session_gap else "users",
            "final": final, "buckets": buckets}
