"""``ecomjax data prepare`` as Apache Beam pipelines: the same passes, on any Beam runner.

The out-of-core path (``shards``) is already shaped for a distributed engine: a scan that can be
cut into independent pieces, one shuffle by bucket, work per bucket, and a small global state
(the item counts of k-core). Here each pass is a Beam pipeline:

1. **scan**: the CSV is cut into byte ranges (a Parquet log into row groups), each read by one
   worker with pyarrow; a row's order key is ``(range, row in range)``, which sorts like the
   file's line order, so the tie rule is the local one; rows go to ``(bucket, rows)`` by the
   same stable hash of the sequence key as the local path; ``GroupByKey`` brings each bucket's
   rows together, and each bucket is cleaned by the very function the local path uses and
   written to a bucket file;
2. **k-core**: one pipeline per round, summing item counts over the buckets (``CombinePerKey``),
   until no item changes (the driver loops, as Beam graphs are acyclic);
3. **shards**: each bucket is written as its shard with the global item ids.

The result is the local path's shards, row for row (``benchmarks/data_scale.py --beam`` compares
them on a 1M-row log). The runner is Beam's: the local DirectRunner by default;
``--runner DataflowRunner --project P --region R --temp_location gs://...``, ``FlinkRunner`` or
``SparkRunner`` (``--flink_master`` / ``--spark_master_url``) run the same code, with ``out`` and
the log on a filesystem every worker mounts (NFS, Filestore, gcsfuse): the workers use plain
file paths, not ``gs://`` URLs. Needs the ``beam`` extra;
Beam pins its own numpy / pyarrow / protobuf, so it usually lives in an environment of its own.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecomjax.data.log_readers import ColumnMap, _header
from ecomjax.data.preprocess import PreprocessConfig, preprocess
from ecomjax.data.shards import (
    BUCKET_BYTES,
    _bucket_of,
    _k_core_round,
    _read_bucket,
    _write_log,
    _write_shard,
    bucket_report,
    validated_batch,
)
from ecomjax.errors import InputError

RANGE_BYTES = 32 << 20  # bytes of CSV per scan task


def prepare_shards_beam(path: str | Path, out: str | Path, columns: ColumnMap, steps: PreprocessConfig, *,
                        delimiter: str = ",", header: bool = True, bucket_bytes: int = BUCKET_BYTES,
                        num_buckets: int | None = None, range_bytes: int = RANGE_BYTES,
                        beam_args: list[str] | None = None) -> dict[str, Any]:
    """The shards of ``prepare_shards``, computed by Beam pipelines (module doc)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    path, out = Path(path), Path(out)
    if (out / "manifest.json").exists():
        raise InputError(f"{out} already holds prepared shards; remove it or choose another directory")
    if steps.session_gap is not None and columns.session is not None:
        raise InputError("data.preprocess.session_gap builds sessions from users; the log already has "
                         "data.columns.session")
    size = path.stat().st_size
    buckets = num_buckets or max(1, math.ceil(size / bucket_bytes))
    work = out / "_buckets"
    work.mkdir(parents=True, exist_ok=True)
    key_role = "session" if columns.session is not None else "user"
    first = _header(path, delimiter) or []
    names = first if header else [str(i) for i in range(len(first))]
    ranges = [(i, start, min(size, start + range_bytes)) for i, start in enumerate(range(0, size, range_bytes))]
    per_bucket = replace(steps, min_rating=None, min_user_interactions=0, min_item_interactions=0)
    options = PipelineOptions(beam_args or [])

    # pass 1: scan, shuffle by bucket, clean each bucket
    with beam.Pipeline(options=options) as pipeline:
        reports = (pipeline
                   | "ranges" >> beam.Create(ranges)
                   | "scan" >> beam.FlatMap(_scan_range, str(path), names, delimiter, header, columns, steps,
                                            key_role, buckets)
                   | "by bucket" >> beam.GroupByKey()
                   | "clean" >> beam.Map(_clean_bucket, columns, per_bucket, str(path), str(work)))
        _ = reports | "collect" >> beam.combiners.ToList() | "save" >> beam.Map(_save_json, str(work / "reports.json"))
    raw_reports = json.loads((work / "reports.json").read_text())
    read, kept = sum(r["read"] for r in raw_reports), sum(r["kept"] for r in raw_reports)
    items = np.unique(np.concatenate([np.asarray(r["items"]) for r in raw_reports])) if raw_reports else np.array([])
    bucket_reports = [r["report"] for r in raw_reports]

    # pass 2: k-core rounds over the bucket files
    alive, rounds = None, 0
    if steps.min_user_interactions or steps.min_item_interactions:
        while True:
            rounds += 1
            with beam.Pipeline(options=options) as pipeline:
                _ = (pipeline
                     | "buckets" >> beam.Create(list(range(buckets)))
                     | "count" >> beam.FlatMap(_bucket_item_counts, str(work), alive, steps.min_user_interactions)
                     | "sum" >> beam.CombinePerKey(sum)
                     | "alive" >> beam.Filter(lambda kv, m=steps.min_item_interactions: kv[1] >= m)
                     | "keys" >> beam.Keys()
                     | "all" >> beam.combiners.ToList()
                     | "save" >> beam.Map(_save_json, str(work / "alive.json")))
            new_alive = np.sort(np.asarray(json.loads((work / "alive.json").read_text()), dtype=items.dtype))
            if alive is not None and len(new_alive) == len(alive):
                break
            alive = new_alive
    item_ids = alive if alive is not None else items

    # pass 3: shards
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "buckets" >> beam.Create(list(range(buckets)))
             | "write" >> beam.Map(_shard, str(work), str(out), item_ids.tolist(), None if alive is None else
                                   alive.tolist(), steps.min_user_interactions)
             | "collect" >> beam.combiners.ToList()
             | "save" >> beam.Map(_save_json, str(work / "counts.json")))
    per_shard = json.loads((work / "counts.json").read_text())
    final = {"interactions": sum(c[0] for c in per_shard), "sequences": sum(c[1] for c in per_shard),
             "items": len(item_ids)}
    report = bucket_report(path, "delimited", read, kept, steps, bucket_reports, rounds, final, buckets, key_role)
    report["engine"] = "apache beam"
    np.save(out / "item_ids.npy", np.concatenate([np.array([-1 if item_ids.dtype.kind in "iu" else ""],
                                                           dtype=item_ids.dtype), item_ids]))
    (out / "data_report.json").write_text(json.dumps(report, indent=1))
    (out / "manifest.json").write_text(json.dumps({"shards": [f"shard-{b:05d}.parquet" for b in range(buckets)],
                                                   **final, "has_times": columns.time is not None,
                                                   "preprocess": asdict(steps)}, indent=1))
    shutil.rmtree(work)
    return report


def _save_json(value, file: str) -> None:
    Path(file).write_text(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _scan_range(task: tuple[int, int, int], path: str, names: list[str], delimiter: str, header: bool,
                columns: ColumnMap, steps: PreprocessConfig, key_role: str, buckets: int):
    """One byte range of the CSV -> ``(bucket, table)`` pairs; a row's order key is
    ``range << 32 | row in range`` (file order)."""
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    index, start, end = task
    with open(path, "rb") as handle:
        handle.seek(start)
        if start > 0:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":
                handle.readline()  # the line that began before this range belongs to the previous one
        begin = handle.tell()
        if begin >= end and start > 0:
            return
        data = handle.read(max(0, end - begin))
        if not data.endswith(b"\n"):
            data += handle.readline()  # finish the range's last line
    if index == 0 and header:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    if not data.strip():
        return
    used = columns.used()
    table = pa_csv.read_csv(pa.py_buffer(data), read_options=pa_csv.ReadOptions(column_names=names),
                            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                            convert_options=pa_csv.ConvertOptions(include_columns=list(dict.fromkeys(used.values()))))
    table = validated_batch(table, columns, lambda row: f"{path}: scan range {index} (byte {begin}), row {row + 1}")
    rows = (np.int64(index) << np.int64(32)) + np.arange(len(table), dtype=np.int64)
    table = table.append_column("_row", pa.array(rows))
    read = len(table)
    if steps.min_rating is not None:
        table = table.filter(pc.greater_equal(pc.cast(table.column(used["rating"]), pa.float64()), steps.min_rating))
    bucket = _bucket_of(table.column(used[key_role]), buckets)
    for b in range(buckets):
        part = table.filter(pa.array(bucket == b))
        yield b, (read if b == 0 else 0, part)


def _clean_bucket(element, columns: ColumnMap, steps: PreprocessConfig, source: str, work: str) -> dict:
    """All rows of one bucket, in file order, cleaned as the local path cleans them."""
    bucket, parts = element
    parts = list(parts)
    read = sum(p[0] for p in parts)
    tables = [p[1] for p in parts if p[1].num_rows]
    raw = Path(work) / f"raw-{bucket:05d}.parquet"
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
        table = table.take(pa.array(np.argsort(table.column("_row").to_numpy(), kind="stable")))
        pq.write_table(table, raw)
    log = _read_bucket(raw, columns, Path(source))
    if log is None:
        return {"read": read, "kept": 0, "items": [], "report": None}
    raw.unlink()
    kept = len(log)
    log, report = preprocess(log, steps)
    _write_log(log, Path(work) / f"clean-{bucket:05d}.parquet")
    return {"read": read, "kept": kept, "items": np.unique(log.items).tolist(), "report": report}


def _bucket_item_counts(bucket: int, work: str, alive, min_sequence: int):
    for item, count in _k_core_round(Path(work), bucket, None if alive is None else np.asarray(alive), min_sequence):
        yield item, int(count)


def _shard(bucket: int, work: str, out: str, item_ids: list, alive: list | None, min_sequence: int) -> tuple[int, int]:
    return _write_shard(Path(work), Path(out), bucket, np.asarray(item_ids), None if alive is None else
                        np.asarray(alive), min_sequence)
