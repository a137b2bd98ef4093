"""Hyperparameter tuning against the shipped configs, on a wall-time budget.

Each scenario runs ``ecomjax tune`` as a user would (a fresh process, the shipped space file),
selected on validation only; the test split is scored for the selected trials and for the
baseline trial (the shipped config itself, the study's trial 0, same seed), which is the
reference the gain is measured against in the same run.

``sasrec``: SASRec on Beauty, 60 minutes with the median pruner beside 60 minutes without
pruning, run at the same time on one core each of this 2-core machine (so both see the same
machine load: the comparison is paired), each study one trial at a time on its core. The best
config is written to ``configs/sasrec_beauty_tuned.yaml``.

``ranker``: the satisfaction ranker on synthetic impressions (objective: validation loss; the
table shows the test CTR AUC gap to the Bayes ceiling), two trials at a time, one core each.

``search_gbdt``: the served (fast) LightGBM re-ranker of the Home Depot search run (objective:
its validation RMSE; the table shows test RMSE), two trials at a time.

    python -m benchmarks.tuning sasrec [--minutes 60]
    python -m benchmarks.tuning ranker [--minutes 25] [--cores 0,1]
    python -m benchmarks.tuning search_gbdt [--minutes 20] [--cores 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.smoke import (
    TINY_RANKER,
    as_cli,
    beauty_overrides,
    require_scratch,
    search_overrides,
)
from ecomjax.bench.report import print_table, results_directory, runs_directory, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = results_directory() / "tuning.json"
SHIPPED = {"sasrec": 0.0578}  # test NDCG@10 of configs/sasrec_beauty.yaml the issue measures against


QUICK: dict[str, Any] = {}  # --quick: {"overrides": [...], "trials": N} for every study


def _tune(config: str, space: str, tune_dir: Path, minutes: float, *, pruner: str, jobs: int,
          cores: set[int], extra: list[str]) -> subprocess.Popen:
    trials, top = (str(QUICK["trials"]), "1") if QUICK else ("1000", "3")
    command = [sys.executable, "-m", "ecomjax", "tune", config, *QUICK.get("overrides", []), "--space", space,
               "--trials", trials, "--jobs", str(jobs), "--dir", str(tune_dir), "--pruner", pruner,
               "--timeout", str(minutes * 60), "--top", top, *extra]
    log = open(tune_dir.with_suffix(".log"), "w", encoding="utf-8")  # noqa: SIM115 (lives with the process)
    print("$", " ".join(command[2:]), f"(cores {sorted(cores)})", flush=True)
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores),
                            env={**os.environ, "TQDM_DISABLE": "1"})


def _summarise(tune_dir: Path, started: float, extract) -> dict[str, Any]:
    """The study's report, with ``extract(eval metrics) -> {metric: value}`` of the test split."""
    report = json.loads((tune_dir / "report.json").read_text())
    best = report["best"]
    wall = report["elapsed_seconds"] if started is None else round(time.perf_counter() - started, 1)
    top = [r for r in report["trials"] if isinstance(r.get("test"), dict) and "error" not in r["test"]]
    baseline = _baseline_test(tune_dir, report)
    return {
        "tune_dir": str(tune_dir.relative_to(ROOT) if tune_dir.is_relative_to(ROOT) else tune_dir), "wall_seconds": wall,
        "stopped": report["stopped"], "counts": report["counts"],
        "best": {"trial": best["number"], "valid": best["value"], "params": best["params"], "epochs": best["epochs"],
                 "test": extract(best["test"]) if best in top else None} if best else None,
        "top3_test": [{"trial": r["number"], "valid": r["value"], **extract(r["test"])} for r in top],
        "trials": [{k: r[k] for k in ("number", "state", "params", "value", "epochs", "seconds")}
                   for r in report["trials"]],
        "baseline": baseline and {"valid": baseline["valid"], "seconds": baseline["seconds"],
                                  "test": extract(baseline["metrics"])},
    }


def _baseline_test(tune_dir: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped config's own trial (trial 0), its test split scored now: the reference."""
    rows = [r for r in report["trials"] if r["baseline"] and r["state"] == "COMPLETE"]
    if not rows:
        return None
    workdir = tune_dir / rows[0]["workdir"]
    subprocess.run([sys.executable, "-m", "ecomjax", "eval", str(workdir), "report_test=true"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    return {"valid": rows[0]["value"], "seconds": rows[0]["seconds"],
            "metrics": json.loads((workdir / "eval" / "metrics.json").read_text())}


def _next_item_test(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics["test"][k] for k in ("ndcg@10", "hr@10", "ndcg@20", "hr@20")}


def _ranker_test(metrics: dict[str, Any]) -> dict[str, Any]:
    test, bayes = metrics["test"], metrics.get("bayes", {})
    auc, ceiling = test["click"]["auc"], bayes.get("click", {}).get("auc")
    return {"ctr_auc": auc, "bayes_ctr_auc": ceiling, "ctr_auc_gap_to_bayes": None if ceiling is None else ceiling - auc,
            "ctr_log_loss": test["click"]["log_loss"], "ctcvr_auc": test["purchase"]["auc"],
            "cvr_auc_all": test["cvr"]["auc_all"], "dwell_rmse_log": test["dwell"]["rmse_log"]}


def _search_test(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"gbdt_fast_rmse": metrics["gbdt_fast"]["rmse"], "gbdt_fast_ndcg@10": metrics["gbdt_fast"].get("ndcg@10")}


def sasrec(minutes: float, existing: bool = False) -> dict[str, Any]:
    base = runs_directory() / "bench" / "tune"
    base.mkdir(parents=True, exist_ok=True)
    studies = {"median_pruner": ("median", {0}), "no_pruning": ("none", {1})}
    started = time.perf_counter()
    processes = {}
    for name, (pruner, cores) in studies.items():
        tune_dir = base / f"sasrec_beauty_{name}"
        if existing:  # summarise finished studies again (no training)
            processes[name] = (None, tune_dir)
            continue
        if tune_dir.exists():
            raise SystemExit(f"{tune_dir} exists: remove it for a fresh measurement")
        processes[name] = (_tune("configs/sasrec_beauty.yaml", "configs/tune/sasrec_beauty.yaml", tune_dir, minutes,
                                 pruner=pruner, jobs=1, cores=cores,
                                 extra=["--startup-trials", "3", "--warmup-epochs", "4"]), tune_dir)
    results = {}
    for name, (process, tune_dir) in processes.items():
        if process is not None and process.wait() != 0:
            raise SystemExit(f"{name}: ecomjax tune exited {process.returncode}; see {tune_dir.with_suffix('.log')}")
        results[name] = _summarise(tune_dir, None if existing else started, _next_item_test)
    pruned = results["median_pruner"]
    tuned = None
    if pruned["best"] is not None and pruned["best"]["trial"] != 0:
        _write_tuned_config(ROOT / pruned["tune_dir"] / "best.yaml", pruned)
        tuned = "configs/sasrec_beauty_tuned.yaml"
    else:
        print("the search kept the shipped values (no trial beat trial 0 on validation): no tuned config written")
    return {"budget_minutes": minutes, "config": "configs/sasrec_beauty.yaml", "space": "configs/tune/sasrec_beauty.yaml",
            "setup": "two studies at once, one CPU core each (the same machine load), one trial at a time per study; "
                     "median pruner: 3 startup trials, from epoch 5",
            "shipped_test_ndcg@10": SHIPPED["sasrec"], "studies": results, "tuned_config": tuned}


def _write_tuned_config(best_yaml: Path, study: dict[str, Any]) -> None:
    best = study["best"]
    text = best_yaml.read_text().split("\n", 2)[2]  # drop the tuner's own two header lines
    text = text.replace("workdir: runs/sasrec_beauty_median_pruner_best", "workdir: runs/sasrec_beauty_tuned")
    header = ("# SASRec on Amazon Beauty, tuned: configs/sasrec_beauty.yaml with the values `ecomjax tune` chose\n"
              "# (configs/tune/sasrec_beauty.yaml, median pruner, 60 minutes on one CPU core; selected on validation\n"
              f"# NDCG@10 only: {best['valid']:.4f}). Test NDCG@10 {best['test'].get('ndcg@10', float('nan')):.4f}, "
              f"HR@10 {best['test'].get('hr@10', float('nan')):.4f}\n"
              "# (benchmarks/results/tuning.json). Chosen: "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
              + "\n")
    # a quick run's choice means nothing: it stays in the scratch runs directory
    target = runs_directory() if QUICK else ROOT / "configs"
    (target / "sasrec_beauty_tuned.yaml").write_text(header + text)


def _run_or_reuse(tune_dir: Path, existing: bool, launch) -> float | None:
    """Launch the study (or, with ``existing``, summarise the finished one again); returns the
    start time for the wall clock (``None``: take the report's own elapsed time)."""
    if existing:
        return None
    if tune_dir.exists():
        raise SystemExit(f"{tune_dir} exists: remove it for a fresh measurement")
    started = time.perf_counter()
    process = launch()
    if process.wait() != 0:
        raise SystemExit(f"ecomjax tune exited {process.returncode}; see {tune_dir.with_suffix('.log')}")
    return started


def ranker(minutes: float, cores: set[int], existing: bool = False) -> dict[str, Any]:
    base = runs_directory() / "bench" / "tune"
    base.mkdir(parents=True, exist_ok=True)
    tune_dir = base / "ranker_synthetic"
    started = _run_or_reuse(tune_dir, existing, lambda: _tune("configs/ranker_synthetic.yaml", "configs/tune/ranker_synthetic.yaml", tune_dir, minutes,
                    pruner="median", jobs=len(cores), cores=cores,
                    extra=["--startup-trials", "2", "--warmup-epochs", "2"]))
    result = _summarise(tune_dir, started, _ranker_test)
    return {"budget_minutes": minutes, "config": "configs/ranker_synthetic.yaml",
            "space": "configs/tune/ranker_synthetic.yaml",
            "setup": f"{len(cores)} trial(s) at a time, one CPU core each (cores {sorted(cores)})",
            "study": result}


def search_gbdt(minutes: float, cores: set[int], existing: bool = False) -> dict[str, Any]:
    base = runs_directory() / "bench" / "tune"
    base.mkdir(parents=True, exist_ok=True)
    tune_dir = base / "search_gbdt"
    started = _run_or_reuse(tune_dir, existing, lambda: _tune(
        "configs/search_homedepot.yaml", "configs/tune/search_gbdt.yaml", tune_dir, minutes, pruner="none",
        jobs=len(cores), cores=cores, extra=[]))
    return {"budget_minutes": minutes, "config": "configs/search_homedepot.yaml", "space": "configs/tune/search_gbdt.yaml",
            "setup": f"{len(cores)} trial(s) at a time, one CPU core each (cores {sorted(cores)}); no pruning "
                     "(one evaluation per trial)",
            "study": _summarise(tune_dir, started, _search_test)}


def _row(scenario: str, study: dict[str, Any], test_key: str, metric: str) -> dict[str, Any]:
    best, baseline = study["best"], study["baseline"] or {}
    return {"scenario": scenario, "trials": sum(study["counts"].values()), "complete": study["counts"]["COMPLETE"],
            "pruned": study["counts"]["PRUNED"], "best valid": best["valid"],
            "best test": (best["test"] or {}).get(test_key), "baseline valid": baseline.get("valid"),
            "baseline test": (baseline.get("test") or {}).get(test_key), "metric": metric}


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [_row(f"sasrec_beauty {name}", study, "ndcg@10", "ndcg@10")
            for name, study in results.get("sasrec", {}).get("studies", {}).items()]
    if "ranker" in results:
        rows.append(_row("ranker_synthetic", results["ranker"]["study"], "ctr_auc", "loss / ctr_auc"))
    if "search_gbdt" in results:
        rows.append(_row("search_gbdt (gbdt_fast)", results["search_gbdt"]["study"], "gbdt_fast_rmse", "rmse"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["sasrec", "ranker", "search_gbdt"])
    parser.add_argument("--minutes", type=float, help="wall-time budget (sasrec 60, ranker 25, search_gbdt 20)")
    parser.add_argument("--cores", default="0,1", help="ranker / search_gbdt: CPU cores, one trial per core")
    parser.add_argument("--existing", action="store_true", help="summarise the finished studies again (no training)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: two trials (the baseline and one sampled) at tiny sizes, test of the best only")
    args = parser.parse_args()
    require_scratch(args.quick)
    if args.quick:
        # the shipped config's own values must lie inside the space for it to be trial 0 (the baseline)
        tiny_ranker = {**{k: v for k, v in TINY_RANKER.items() if k != "train.batch_size"},
                       "data.impressions.num_requests": 3000}
        tiny = {"sasrec": beauty_overrides(), "ranker": tiny_ranker, "search_gbdt": search_overrides()}[args.scenario]
        QUICK.update(overrides=as_cli(tiny), trials=2)
    cores = {int(c) for c in args.cores.split(",")}
    if args.scenario == "sasrec":
        result = sasrec(args.minutes or 60, args.existing)
    elif args.scenario == "ranker":
        result = ranker(args.minutes or 25, cores, args.existing)
    else:
        result = search_gbdt(args.minutes or 20, cores, args.existing)
    # read after the run: two scenarios may run side by side, each adding its own key
    previous = json.loads(RESULTS.read_text())["results"] if RESULTS.is_file() else {}
    previous[args.scenario] = result
    path = write_results("tuning", previous)
    print_table(_rows(previous), ["scenario", "trials", "complete", "pruned", "best valid", "best test",
                                  "baseline valid", "baseline test", "metric"],
                title="Tuning on a wall-time budget (validation selects; test of the selected trial)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
