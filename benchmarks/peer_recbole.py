"""ecomjax SASRec vs RecBole 1.2.1 SASRec on Amazon Beauty, same machine, one after the other.

Both sides: 2 layers, 2 heads, hidden 64, inner 256, max_len 50, full-softmax cross-entropy,
leave-one-out, full ranking with history excluded (RecBole's stock evaluation keeps history in
the ranking for sequential models; the worker masks it, see its docstring). ecomjax runs its
shipped ``configs/sasrec_beauty.yaml``; RecBole runs the settings of ``shared/notes/peers.md``.
The sides are never run together: two processes on two cores slow each other four-fold.

Reported per side: seconds per training epoch, seconds (training + validation, compile
excluded) until validation NDCG@10 first reaches 0.03, the validation curve, and test metrics
of the best-validation weights.

    python -m benchmarks.peer_recbole [--recbole-epochs 6] [--recbole-patience 3] [--skip-recbole]

The two sides can also be measured at different times (the machine must be otherwise idle for
each): ``--reuse-ecomjax`` reruns RecBole only, ``--reuse-recbole`` reruns ecomjax only; the kept
side carries ``measured_at``. A RecBole run interrupted with SIGINT on its worker process still
tests its best epoch so far and records how it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peers.recbole_env import ensure_recbole_env
from benchmarks.smoke import as_cli, beauty_overrides, require_scratch
from ecomjax.bench.report import print_table, results_directory, runs_directory, write_results

ROOT = Path(__file__).resolve().parent.parent

TARGET = 0.03


def run_ecomjax(config: str, workdir: Path, overrides: list[str]) -> dict:
    """Train in a fresh process (as RecBole does) and read its outputs."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "ecomjax.cli", "train", config, f"workdir={workdir}",
           "train.resume=false", "train.progress=false", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    metrics = json.loads((workdir / "metrics.json").read_text())
    curve = metrics["valid_curve"]
    reached = next((r for r in curve if r["ndcg@10"] >= TARGET), None)
    return {
        "peer": "ecomjax",
        "wall_seconds": round(wall, 1),
        "compile_seconds": metrics["compile_seconds"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "epochs_run": metrics["epochs_run"],
        "seconds_to_valid_ndcg10_0.03": (
            round(reached["train_seconds"] + reached["eval_seconds"], 1) if reached else None
        ),
        "epoch_to_valid_ndcg10_0.03": reached["epoch"] if reached else None,
        "valid_curve": [{"epoch": r["epoch"], "ndcg@10": r["ndcg@10"],
                         "cum_seconds": round(r["train_seconds"] + r["eval_seconds"], 1)} for r in curve],
        "best_epoch": metrics["best_epoch"],
        "best_valid": {k: metrics["valid"][k] for k in ("ndcg@10", "hr@10", "mrr@10")},
        "test": {k: metrics["test"][k] for k in ("ndcg@10", "hr@10", "mrr@10")},
        "config": config,
        "overrides": overrides,
    }


def run_recbole(data: Path, epochs: int, threads: int, patience: int | None) -> dict:
    python = ensure_recbole_env(quiet=True)
    extra = ["--patience", str(patience)] if patience is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "recbole.json"
        start = time.perf_counter()
        subprocess.run(
            [str(python), str(ROOT / "benchmarks/peers/recbole_sasrec_worker.py"), "--data", str(data),
             "--epochs", str(epochs), "--threads", str(threads), "--out", str(out), *extra],
            check=True, cwd=ROOT,
        )
        wall = time.perf_counter() - start
        raw = json.loads(out.read_text())
    epochs_rec = raw["epochs"]
    return {
        "peer": f"RecBole {raw['versions']['recbole']} (torch {raw['versions']['torch']})",
        "wall_seconds": round(wall, 1),
        "seconds_per_epoch": round(sum(e["train_seconds"] for e in epochs_rec) / len(epochs_rec), 1),
        "epochs_run": len(epochs_rec),
        "stopped": raw["stopped"],
        "seconds_to_valid_ndcg10_0.03": raw["seconds_to_valid_ndcg10_0.03"],
        "epoch_to_valid_ndcg10_0.03": raw["epoch_to_valid_ndcg10_0.03"],
        "valid_curve": [{"epoch": e["epoch"], "ndcg@10": e["valid"]["ndcg@10"],
                         "cum_seconds": round(e["cum_seconds"], 1)} for e in epochs_rec],
        "best_epoch": raw["best_epoch"],
        "best_valid": {"ndcg@10": raw["best_valid"]["ndcg@10"], "hr@10": raw["best_valid"]["hit@10"],
                       "mrr@10": raw["best_valid"]["mrr@10"]},
        "test": {"ndcg@10": raw["test"]["ndcg@10"], "hr@10": raw["test"]["hit@10"],
                 "mrr@10": raw["test"]["mrr@10"]},
        "exclude_history": raw["exclude_history"],
        "settings": raw["settings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sasrec_beauty.yaml")
    parser.add_argument("--recbole-epochs", type=int, default=6,
                        help="RecBole epochs (about 3 minutes each on 2 cores)")
    parser.add_argument("--recbole-patience", type=int, default=None,
                        help="stop RecBole after this many epochs without a better validation score")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for RecBole")
    parser.add_argument("--skip-recbole", action="store_true", help="ecomjax side only")
    parser.add_argument("--reuse-recbole", action="store_true",
                        help="keep the RecBole side of the existing results file (rerun ecomjax only)")
    parser.add_argument("--reuse-ecomjax", action="store_true",
                        help="keep the ecomjax side of the existing results file (rerun RecBole only)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the ecomjax side")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: the ecomjax side on 400 Beauty users with a tiny model (RecBole's own "
                             "environment takes minutes to build, so it is skipped)")
    args = parser.parse_args()
    require_scratch(args.quick)
    os.environ.setdefault("ECOMJAX_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    data = Path(os.environ["ECOMJAX_DATA_DIR"]) / "amazon-beauty" / "Beauty.txt"
    if not data.is_file():
        raise SystemExit(f"Beauty.txt not found under ECOMJAX_DATA_DIR={os.environ['ECOMJAX_DATA_DIR']}")
    if args.quick:
        args.skip_recbole = True
        args.overrides = [*args.overrides, *as_cli(beauty_overrides())]

    if args.reuse_recbole and args.reuse_ecomjax:
        raise SystemExit("--reuse-recbole and --reuse-ecomjax together would measure nothing")
    previous = results_directory() / "peer_recbole.json"

    def reused(prefix: str) -> dict:
        """One side of the previous results file, stamped with when it was measured."""
        old = json.loads(previous.read_text())
        side = next(s for s in old["results"]["sides"] if s["peer"].startswith(prefix))
        side.setdefault("measured_at", old["timestamp_utc"])
        return side

    if args.reuse_ecomjax:
        sides = [reused("ecomjax")]
    else:
        sides = [run_ecomjax(args.config, runs_directory() / "peer_recbole" / "ecomjax", args.overrides)]
    if args.reuse_recbole:
        sides.append(reused("RecBole"))
    elif not args.skip_recbole:
        sides.append(run_recbole(data, args.recbole_epochs, args.threads, args.recbole_patience))
    rows = [{
        "library": s["peer"],
        "s/epoch": s["seconds_per_epoch"],
        "s to valid ndcg@10 0.03": s["seconds_to_valid_ndcg10_0.03"],
        "epochs run": s["epochs_run"],
        "best valid ndcg@10": round(s["best_valid"]["ndcg@10"], 4),
        "test ndcg@10": round(s["test"]["ndcg@10"], 4),
        "test hr@10": round(s["test"]["hr@10"], 4),
    } for s in sides]
    payload = {"task": "SASRec on Amazon Beauty, leave-one-out, full ranking, history excluded",
               "target_valid_ndcg10": TARGET, "sides": sides}
    if len(sides) == 2 and all(s["seconds_to_valid_ndcg10_0.03"] for s in sides):
        payload["speedup_to_valid_ndcg10_0.03"] = round(
            sides[1]["seconds_to_valid_ndcg10_0.03"] / sides[0]["seconds_to_valid_ndcg10_0.03"], 2)
        payload["speedup_seconds_per_epoch"] = round(sides[1]["seconds_per_epoch"] / sides[0]["seconds_per_epoch"], 2)
    path = write_results("peer_recbole", payload)
    print_table(rows, list(rows[0]), title="SASRec on Beauty: ecomjax vs RecBole (same machine, one after the other)")
    for key in ("speedup_to_valid_ndcg10_0.03", "speedup_seconds_per_epoch"):
        if key in payload:
            print(f"{key}: {payload[key]}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
