"""Sequential recommenders on the real datasets, against the published numbers on the same splits.

Runs each shipped config as a user would (``ecomjax train CONFIG``, fresh process, wall time
measured around the whole command) and compares test NDCG@10 / HR@10 (full ranking, history
excluded, leave-one-out) with the published rows the configs name.

    python -m benchmarks.sequential                     # all four
    python -m benchmarks.sequential sasrec_beauty       # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.smoke import as_cli, beauty_overrides, require_scratch
from ecomjax.bench import (
    default_hardware,
    dollars_per_run,
    load_prices,
    measure_matmul_peak,
    mfu,
)
from ecomjax.bench.report import (
    cpu_model,
    print_table,
    results_directory,
    runs_directory,
    write_results,
)

ROOT = Path(__file__).resolve().parent.parent

# Published full-ranking, history-excluded numbers on the same leave-one-out splits
# (shared/data/README.md): S3-Rec repository table for Beauty, generative-recommenders for ML-1M.
PUBLISHED = {
    "sasrec_beauty": {"ndcg@10": 0.0318, "hr@10": 0.0605, "source": "S3-Rec repo table (SASRec)",
                      "best_known": {"ndcg@10": 0.058, "hr@10": 0.096, "source": "ICSRec, WSDM 2024"}},
    "gru4rec_beauty": {"ndcg@10": 0.0137, "hr@10": 0.0283, "source": "S3-Rec repo table (GRU4Rec)"},
    "sasrec_ml1m": {"ndcg@10": 0.1603, "hr@10": 0.2853, "source": "generative-recommenders (SASRec)",
                    "best_known": {"ndcg@10": 0.1893, "hr@10": 0.3294, "source": "HSTU-large"}},
    "gru4rec_ml1m": {"ndcg@10": 0.1648, "hr@10": 0.2811, "source": "generative-recommenders (GRU4Rec)"},
}


def run(name: str, overrides: list[str], peak_flops: float, hourly_usd: float) -> dict:
    workdir = runs_directory() / "bench" / name
    cmd = [sys.executable, "-m", "ecomjax.cli", "train", f"configs/{name}.yaml", f"workdir={workdir}",
           "train.resume=false", "train.progress=false", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    metrics = json.loads((workdir / "metrics.json").read_text())
    step_flops = metrics.get("flops_per_step")
    seconds_per_step = metrics["train_seconds"] / max(metrics["steps"], 1)
    return {
        "config": f"configs/{name}.yaml",
        "command": "ecomjax train " + " ".join(cmd[4:]),
        "wall_seconds": round(wall, 1),
        "train_seconds": metrics["train_seconds"],
        "eval_seconds": metrics["eval_seconds"],
        "compile_seconds": metrics["compile_seconds"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "stop_reason": metrics["stop_reason"],
        "valid": {k: metrics["valid"][k] for k in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")},
        "test": {k: metrics["test"][k] for k in ("ndcg@5", "hr@5", "ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")},
        "published": PUBLISHED[name],
        "protocol": metrics["protocol"],
        "data": metrics["data"],
        "num_params": metrics["num_params"],
        "steps": metrics["steps"],
        "flops_per_step": step_flops,
        "mfu": mfu(step_flops, seconds_per_step, peak_flops),
        "usd_per_training_run": round(dollars_per_run(wall, hourly_usd), 4),
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu_model(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"configs to run (default: all of {list(PUBLISHED)})")
    parser.add_argument("--override", action="append", default=[], help="key=value for every run")
    parser.add_argument("--forget", action="append", default=[],
                        help="drop a stale entry (e.g. after its config changed) from the results file")
    parser.add_argument("--quick", action="store_true", help="smoke: SASRec on 400 Beauty users, one epoch, tiny model")
    args = parser.parse_args()
    require_scratch(args.quick)
    unknown = set(args.names) - set(PUBLISHED)
    if unknown:
        parser.error(f"unknown config(s) {sorted(unknown)}; choose from {list(PUBLISHED)}")
    args.names = args.names or (["sasrec_beauty"] if args.quick else [] if args.forget else list(PUBLISHED))
    os.environ.setdefault("ECOMJAX_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    if args.quick:
        args.override = [*args.override, *as_cli(beauty_overrides())]
    results_path = results_directory() / "sequential.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {"results": {"runs": {}}}
    # a row kept from an earlier run says when it was measured (not when the file was rewritten)
    runs = {name: {**r, "measured_utc": r.get("measured_utc", previous.get("timestamp_utc"))}
            for name, r in previous["results"]["runs"].items() if name not in args.forget}
    for name in args.names:
        if name == args.names[0]:
            peak = measure_matmul_peak()  # float32 matmul FLOP/s of this device, the MFU denominator
            hardware = default_hardware()
            hourly = load_prices().hourly(hardware) if hardware else float("nan")
            pricing = {"hardware": hardware, "usd_per_hour": hourly, "matmul_peak_flops": peak}
        runs[name] = run(name, args.override, peak, hourly)
        runs[name]["pricing"] = pricing
        write_results("sequential", {"runs": runs})  # keep what finished if a later run fails
    if not args.names:
        write_results("sequential", {"runs": runs})
    rows = []
    for name, r in runs.items():
        pub = r["published"]
        rows.append({
            "config": name, "test ndcg@10": round(r["test"]["ndcg@10"], 4), "published": pub["ndcg@10"],
            "test hr@10": round(r["test"]["hr@10"], 4), "published hr": pub["hr@10"],
            "epochs": r["epochs_run"], "wall s": r["wall_seconds"], "s/epoch": r["seconds_per_epoch"],
            "MFU": None if r.get("mfu") is None else round(r["mfu"], 3),
            "$/run": r.get("usd_per_training_run"),
        })
    print_table(rows, list(rows[0]), title="Sequential recommenders: full ranking, history excluded")
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
