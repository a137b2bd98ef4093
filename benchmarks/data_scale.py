"""Out-of-core data preparation at 1M, 10M and 100M interactions: throughput and peak host memory.

For each size a synthetic click log is written as CSV (``user,item,time``; users = size / 20,
100,000 items drawn Zipf-like, 2% exact duplicate rows and 5% immediate repeats, so every
cleaning step has work), then, each in its own process so that its peak resident memory is its
own (``wait4``):

* ``prepare``: ``ecomjax data prepare`` on it (drop duplicates, chronological order, drop
  consecutive repeats, 5-core), 64 MB of input per bucket;
* ``stream``: one epoch of packed training batches (batch 64 rows of 50 tokens) read through
  the grain shard pipeline, one shard in memory at a time;
* ``in memory`` (1M and 10M only): the same steps on the whole log at once, for contrast;
* ``beam`` (with ``--beam``, 1M only): the same preparation as Apache Beam pipelines on the
  DirectRunner, in an environment of its own under ``.peers/beam`` (Beam pins older numpy /
  pyarrow than ours), whose shards must equal the local ones table for table.

Memory must not grow with the log beyond the id maps (items here; users live only in their
bucket). Rows/s counts input interactions.

    python -m benchmarks.data_scale [--sizes 1e6 1e7 1e8] [--beam] [--keep] [--results NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.smoke import require_scratch
from ecomjax.bench.report import print_table, runs_directory, write_results

ROOT = Path(__file__).resolve().parent.parent
WORK = runs_directory() / "bench" / "data_scale"
NUM_ITEMS = 100_000
CHUNK = 1_000_000
STEPS = ["data.preprocess.drop_duplicates=true", "data.preprocess.drop_consecutive_repeats=true",
         "data.preprocess.min_user_interactions=5", "data.preprocess.min_item_interactions=5"]


def write_log(path: Path, size: int, seed: int = 0) -> None:
    """The synthetic log of the module doc, written in chunks (memory flat in ``size``)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    users = max(1, size // 20)
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("time", pa.int64())])
    with pa_csv.CSVWriter(str(path), schema) as writer:
        for start in range(0, size, CHUNK):
            n = min(CHUNK, size - start)
            user = rng.integers(0, users, n)
            item = (rng.pareto(1.2, n) * 1000).astype(np.int64) % NUM_ITEMS
            t = start + np.arange(n) + rng.integers(0, 3, n)  # roughly increasing, with equal times
            dup = rng.random(n) < 0.02  # exact copies of the previous row
            rep = rng.random(n) < 0.05  # the same user and item again a moment later
            for column in (user, item):
                column[1:][dup[1:] | rep[1:]] = column[:-1][dup[1:] | rep[1:]]
            t[1:][dup[1:]] = t[:-1][dup[1:]]
            writer.write_table(pa.table({"user": user, "item": item, "time": t}, schema=schema))


def _child(argv: list[str]) -> dict:
    """Run ``python -m benchmarks.data_scale --child ...`` and return its JSON and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.data_scale", "--child", *argv], cwd=ROOT,
                               stdout=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"child {argv} failed with exit code {process.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def child(kind: str, log: Path, out: Path) -> None:
    from ecomjax.config import load_config

    config = load_config(None, ["data.source=file", f"data.path={log}", "data.format=delimited",
                                "data.columns.time=time", *STEPS]).data
    if kind == "prepare":
        from ecomjax.data.source import prepare_out_of_core

        report = prepare_out_of_core(config, str(out), bucket_bytes=64 << 20)
        print(json.dumps({"final": report["final"], "buckets": report["buckets"], "steps": report["steps"]}))
    elif kind == "stream":
        from ecomjax.data.shard_pipeline import streamed_train_batches

        batches = tokens = 0
        for batch in streamed_train_batches(out, max_len=50, batch_size=64, seed=0, epoch=0):
            batches += 1
            tokens += int((batch["targets"] > 0).sum())
        print(json.dumps({"batches": batches, "train_positions": tokens}))
    else:
        from ecomjax.data.source import load_sequences

        dataset = load_sequences(config)
        print(json.dumps({"final": dataset.report["final"]}))


BEAM_STEPS = ((("apache-beam==2.77.0", "pyyaml>=6", "pytest>=8"), (), False),)


def beam_check(log: Path, local: Path, final: dict) -> dict:
    """The Beam engine on ``log`` in its own environment against the local engine, both with 4 MB
    buckets and the Beam scan in 4 MB byte ranges (so that several scan tasks, buckets and shards
    are compared, not one); ``local`` is the directory to put the local shards beside."""
    import pyarrow.parquet as pq

    from benchmarks.peers.venv import ensure_venv
    from ecomjax.data.log_readers import ColumnMap
    from ecomjax.data.preprocess import PreprocessConfig
    from ecomjax.data.shards import prepare_shards

    python = ensure_venv(ROOT / ".peers" / "beam", BEAM_STEPS, ".ecomjax-beam-steps", pythons=((3, 12),))
    small, out = local.with_name(local.name + "_4mb"), local.with_name(local.name + "_beam")
    for directory in (small, out):
        shutil.rmtree(directory, ignore_errors=True)
    steps = PreprocessConfig(drop_duplicates=True, drop_consecutive_repeats=True, min_user_interactions=5,
                             min_item_interactions=5)
    prepare_shards(log, small, ColumnMap("user", "item", "time"), steps, bucket_bytes=4 << 20)
    code = ("import json, sys; from ecomjax.data.beam_pipeline import prepare_shards_beam; "
            "from ecomjax.data.log_readers import ColumnMap; from ecomjax.data.preprocess import PreprocessConfig; "
            "r = prepare_shards_beam(sys.argv[1], sys.argv[2], ColumnMap('user', 'item', 'time'), PreprocessConfig("
            "drop_duplicates=True, drop_consecutive_repeats=True, min_user_interactions=5, min_item_interactions=5),"
            " bucket_bytes=4 << 20, range_bytes=4 << 20); print(json.dumps(r['final']))")
    started = time.perf_counter()
    done = subprocess.run([str(python), "-c", code, str(log), str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    seconds = round(time.perf_counter() - started, 1)
    shards = json.loads((small / "manifest.json").read_text())["shards"]
    identical = all(pq.read_table(out / s).equals(pq.read_table(small / s)) for s in shards) and np.array_equal(
        np.load(out / "item_ids.npy"), np.load(small / "item_ids.npy"))
    beam_final = json.loads(done.stdout.strip().splitlines()[-1])
    for directory in (small, out):
        shutil.rmtree(directory, ignore_errors=True)
    return {"runner": "DirectRunner", "seconds": seconds, "shards": len(shards), "scan_ranges": -(-log.stat().st_size // (4 << 20)),
            "identical_shards": bool(identical and beam_final == final)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--in-memory-up-to", type=float, default=1e7)
    parser.add_argument("--keep", action="store_true", help="keep the logs and shards under runs/bench/data_scale")
    parser.add_argument("--beam", action="store_true", help="also run the Beam engine on the smallest log and compare")
    parser.add_argument("--results", default="data_scale", help="name of the results file (benchmarks/results/NAME.json)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "LOG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke: one log of 20,000 interactions")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), Path(args.child[2]))
    require_scratch(args.quick)
    if args.quick:
        args.sizes, args.in_memory_up_to = [2e4], 2e4
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in map(int, args.sizes):
        log, out = WORK / f"log_{size}.csv", WORK / f"shards_{size}"
        started = time.perf_counter()
        if not log.exists():
            write_log(log, size)
        print(f"{size:,} interactions: log written in {time.perf_counter() - started:.0f}s "
              f"({log.stat().st_size / 2**20:.0f} MB)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        prepared = _child(["prepare", str(log), str(out)])
        streamed = _child(["stream", str(log), str(out)])
        row = {"interactions": size, "log_mb": round(log.stat().st_size / 2**20), "buckets": prepared["buckets"],
               "sequences": prepared["final"]["sequences"], "items": prepared["final"]["items"],
               "kept": prepared["final"]["interactions"],
               "prepare_s": prepared["seconds"], "prepare_rows_per_s": round(size / prepared["seconds"]),
               "prepare_peak_mb": prepared["peak_rss_mb"],
               "stream_s": streamed["seconds"], "stream_rows_per_s": round(prepared["final"]["interactions"] / streamed["seconds"]),
               "stream_peak_mb": streamed["peak_rss_mb"], "batches": streamed["batches"],
               "steps": prepared["steps"]}
        if args.beam and size == min(map(int, args.sizes)):
            row["beam"] = beam_check(log, out, prepared["final"])
        if size <= args.in_memory_up_to:
            memory = _child(["memory", str(log), str(out)])
            assert memory["final"] == prepared["final"], (memory["final"], prepared["final"])
            row.update(in_memory_s=memory["seconds"], in_memory_peak_mb=memory["peak_rss_mb"])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            log.unlink()
    columns = ["interactions", "log_mb", "buckets", "kept", "prepare_rows_per_s", "prepare_peak_mb",
               "stream_rows_per_s", "stream_peak_mb", "in_memory_peak_mb"]
    print_table(rows, columns, title="Out-of-core preparation and streaming (2-core CPU)")
    for row in rows:
        if "beam" in row:
            print(f"Beam ({row['beam']['runner']}) on the {row['interactions']:,} log: {row['beam']['seconds']}s, "
                  f"shards identical to the local ones: {row['beam']['identical_shards']}")
    write_results(args.results, {"bucket_mb": 64, "steps": STEPS, "rows": rows})


if __name__ == "__main__":
    main()
