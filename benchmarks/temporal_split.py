"""The shipped Beauty SASRec config under leave-one-out and under a global temporal split.

``Beauty.txt`` (the S3-Rec preprocessing) has no timestamps, so this benchmark gives it
**synthetic** ones, written out as a timestamped CSV log that is then read through the log
reader like any user's export: user ``u`` starts at a uniform time in one year and each next
purchase follows after an exponential gap (mean 30 days), seed 0. Within a user the order is
the file's (the timestamps only decide *where the global cutoffs fall*), so the leave-one-out
run on this CSV must give exactly the numbers of ``Beauty.txt`` itself: that row doubles as the
check that the new data layer keeps them.

The temporal row trains on everything before the validation cutoff (no interaction of any user
at or after it: the leakage-free protocol), selects on the first validation-period purchase of
each user with a history, and tests on the first test-period purchase. Its numbers are not
comparable to leave-one-out ones (other targets, other users, shorter histories); they are
what a model deployed at the cutoff would have scored.

    python -m benchmarks.temporal_split [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.smoke import TINY_SASREC, require_scratch
from ecomjax.bench.report import print_table, runs_directory, write_results
from ecomjax.data.files import resolve_data_path

ROOT = Path(__file__).resolve().parent.parent
WORK = runs_directory() / "bench" / "temporal_split"
DAY = 86400.0


def timestamped_beauty(path: Path, seed: int = 0, users: int | None = None) -> Path:
    """``Beauty.txt`` (its first ``users`` users when given) as ``user,item,time`` rows with the
    synthetic times of the module doc."""
    rng = np.random.default_rng(seed)
    lines = [line.split() for line in resolve_data_path("amazon-beauty/Beauty.txt").read_text().splitlines()
             if line.strip()][:users]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write("user,item,time\n")
        for tokens in lines:
            start = rng.uniform(0, 365 * DAY)
            times = start + np.cumsum(np.r_[0.0, rng.exponential(30 * DAY, len(tokens) - 2)])
            out.writelines(f"{tokens[0]},{item},{t:.0f}\n" for item, t in zip(tokens[1:], times, strict=True))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="smoke: the first 400 users, a tiny model, one epoch")
    args = parser.parse_args()
    require_scratch(args.quick)
    import ecomjax

    log = timestamped_beauty(WORK / "beauty_timestamped.csv", users=400 if args.quick else None)
    common = {"data.path": str(log), "data.format": "delimited", "data.columns.time": "time"}
    if args.quick:
        common.update(TINY_SASREC)
    if args.epochs:
        common["train.epochs"] = args.epochs
    rows = []
    for name, extra in (("leave-one-out", {}), ("temporal", {"data.split.method": "temporal"})):
        run = ecomjax.train("configs/sasrec_beauty.yaml", workdir=str(WORK / name), **common, **extra,
                            **{"train.resume": False})
        report = json.loads((run.workdir / "data_report.json").read_text())
        metrics = run.metrics
        rows.append({"split": name, "protocol": metrics["protocol"]["split"],
                     "valid cases": metrics["protocol"].get("valid_cases", metrics["data"]["users"]),
                     "test cases": metrics["protocol"].get("test_cases", metrics["data"]["users"]),
                     "train positions": metrics["data"]["train_positions"],
                     "valid ndcg@10": metrics["valid"]["ndcg@10"], "test ndcg@10": metrics["test"]["ndcg@10"],
                     "test hr@10": metrics["test"]["hr@10"], "epochs": metrics["epochs_run"],
                     "train seconds": metrics["train_seconds"], "time range": report["time_range"]})
    columns = ["split", "valid cases", "test cases", "train positions", "valid ndcg@10", "test ndcg@10",
               "test hr@10", "epochs", "train seconds"]
    print_table(rows, columns, title="SASRec on Beauty (synthetic timestamps): leave-one-out vs global temporal split",
                formats={"valid ndcg@10": ".4f", "test ndcg@10": ".4f", "test hr@10": ".4f", "train seconds": ".0f"})
    write_results("temporal_split", {"config": "configs/sasrec_beauty.yaml", "timestamps": __doc__.split("\n\n")[1],
                                     "rows": rows})


if __name__ == "__main__":
    main()
