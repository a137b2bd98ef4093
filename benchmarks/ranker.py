"""Satisfaction ranker: quality per model and head against the Bayes ceiling, the GBDT baseline,
ESMM against a clicked-only CVR model, train time and inference latency; Taobao cart + buy.

1. **Synthetic impressions** (``configs/ranker_synthetic.yaml``, true probabilities known):
   DCN-v2 + MMoE + ESMM (with the LightGBM baseline and a clicked-only CVR model trained in the
   same run, same splits), AutoInt + MMoE and DCN-v2 + shared bottom, and DCN-v2 with its own
   clicked-only CVR model on the same world with sparser clicks. Per head: AUC, GAUC, log
   loss, calibration; CVR over all impressions against the counterfactual label; NDCG@10 of lists
   re-ranked by the satisfaction score against the true expected satisfaction. The true
   probabilities are scored the same way: the Bayes-optimal row.
2. **Latency**: all heads of one model at batch 1 and 512 (p50 / p99 over warm calls; compile
   apart), for the neural rankers (jitted forward) and the LightGBM heads.
3. **Taobao** (``configs/ranker_taobao.yaml``): buy HR@10 / NDCG@10 on ``buy.test`` for
   popularity, MF, the multi-behaviour model trained on buy alone and on cart + buy.

Run it alone (2 cores: a second job doubles every number):

    python -m benchmarks.ranker            # writes benchmarks/results/ranker.json
    python -m benchmarks.ranker --reuse    # tables and latency from the workdirs trained before
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.smoke import TINY_RANKER, require_scratch
from ecomjax.bench.report import print_table, results_directory, runs_directory, write_results
from ecomjax.bench.timing import time_callable

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {  # name -> overrides of configs/ranker_synthetic.yaml (DCN-v2 + MMoE + ESMM, 1.6M impressions)
    "dcnv2_mmoe_esmm": {},
    "autoint_mmoe_esmm": {"model.interaction": "autoint", "baselines.gbdt": False, "baselines.clicked_only_cvr": False},
    "dcnv2_shared_bottom_esmm": {"model.sharing": "shared_bottom", "baselines.gbdt": False,
                                 "baselines.clicked_only_cvr": False},
    # ESMM's case is sparse clicks: the same world with a lower click base rate (CTR about 2.4%
    # instead of 7.1%), ESMM against the clicked-only CVR model again
    "dcnv2_mmoe_esmm_sparse_clicks": {"data.impressions.click_base": -3.4, "baselines.gbdt": False},
}
SPARSE = "dcnv2_mmoe_esmm_sparse_clicks"


def _row(name: str, m: dict, train_seconds: float | None) -> dict:
    click, purchase, cvr = m.get("click", {}), m.get("purchase", {}), m.get("cvr", {})
    return {"model": name, "ctr_auc": click.get("auc"), "ctr_gauc": click.get("gauc"),
            "ctr_logloss": click.get("log_loss"), "ctr_calibration": click.get("calibration"),
            "ctr_ece": click.get("ece"), "ctcvr_auc": purchase.get("auc"), "ctcvr_logloss": purchase.get("log_loss"),
            "cvr_auc_all": cvr.get("auc_all"), "cvr_logloss_all": cvr.get("log_loss_all"),
            "cvr_calibration_all": cvr.get("calibration_all"), "cvr_auc_clicked": cvr.get("auc_clicked"),
            "dwell_rmse_log": m.get("dwell", {}).get("rmse_log"),
            "ndcg@10_true": m.get("satisfaction", {}).get("ndcg@10_true"), "train_seconds": train_seconds}


QUALITY_COLUMNS = ["model", "ctr_auc", "ctr_gauc", "ctr_logloss", "ctr_calibration", "ctcvr_auc", "cvr_auc_all",
                   "cvr_logloss_all", "cvr_calibration_all", "dwell_rmse_log", "ndcg@10_true", "train_seconds"]


def synthetic(runs: Path, epochs: int | None, reuse: bool, common: dict | None = None,
              variants: dict[str, dict] = VARIANTS) -> tuple[list[dict], dict]:
    import ecomjax

    rows, workdirs = [], {}
    bayes = None
    for name, overrides in variants.items():
        extra = {"workdir": str(runs / name), "train.progress": False, **(common or {}), **overrides}
        if epochs:
            extra["train.epochs"] = epochs
        saved = runs / name / "metrics.json"
        if reuse and saved.is_file():  # same config, trained by an earlier run of this script
            print(f"reusing {saved}", flush=True)
            metrics = json.loads(saved.read_text())
        else:
            print(f"training {name} ...", flush=True)
            metrics = ecomjax.train(ROOT / "configs/ranker_synthetic.yaml", overrides=extra).metrics
        workdirs[name] = runs / name
        rows.append(_row(name, metrics["test"], metrics["train_seconds"]))
        suffix = " (sparse clicks)" if name == SPARSE else ""
        for base, m in metrics.get("baselines", {}).items():
            seconds = m.get("train_seconds", metrics.get("stages", {}).get(base, {}).get("train_seconds"))
            rows.append(_row(f"{base}{suffix}", m, seconds))
        if name == SPARSE:
            rows.append(_row("bayes_optimal (true p, sparse clicks)", metrics["bayes"], None))
        else:
            bayes = metrics.get("bayes", bayes)
    rows.insert(next((i for i, r in enumerate(rows) if r["model"] == SPARSE), len(rows)),
                _row("bayes_optimal (true p)", bayes, None))
    return rows, workdirs


def _timed(fn, calls: int) -> dict:
    """p50 / p99 ms of warm calls (``ecomjax.bench.timing.time_callable``; ``fn`` blocks itself)."""
    timing = time_callable(fn, warmup=1, iters=calls)
    return {"p50_ms": 1e3 * timing.p50, "p99_ms": 1e3 * timing.p99, "calls": calls}


def latency(workdirs: dict[str, Path], calls: tuple[int, int] = (2000, 300)) -> list[dict]:
    """All heads for ``batch`` candidates: the features already on the device, one compiled call
    (``RankerScorer``: split graph, ``jax.jit`` over the state), warm; LightGBM on host arrays."""
    import jax
    import lightgbm as lgb

    import ecomjax
    from ecomjax.tasks.ranker import load_impressions
    from ecomjax.tasks.ranker_gbdt import tree_features

    rows = []
    data = None
    for name, workdir in workdirs.items():
        run = ecomjax.load(workdir)
        scorer = run.inference  # RankerScorer: what run.score calls
        if data is None:
            data, splits = load_impressions(run.config)
            test = splits["test"]
        for batch in (1, 512):
            take = test[:batch]
            args = [jax.device_put(a) for a in (data.categorical[take], data.numeric[take], data.sequences[take])]
            start = time.perf_counter()
            jax.block_until_ready(scorer(*args))
            first = time.perf_counter() - start
            timing = _timed(lambda args=args, scorer=scorer: jax.block_until_ready(scorer(*args)),
                            calls[0] if batch == 1 else calls[1])
            rows.append({"model": name, "batch": batch, **timing, "first_call_s": first})
    gbdt_dir = workdirs["dcnv2_mmoe_esmm"] / "gbdt"
    if gbdt_dir.is_dir():
        boosters = [lgb.Booster(model_file=str(p)) for p in sorted(gbdt_dir.glob("*.txt"))]
        x, _, _, _ = tree_features(data.take(test[:512]))
        for batch in (1, 512):
            rows.append({"model": f"gbdt ({len(boosters)} boosters)", "batch": batch,
                         **_timed(lambda batch=batch: [b.predict(x[:batch]) for b in boosters],
                                  calls[0] // 4 if batch == 1 else calls[1] // 3), "first_call_s": None})
    return rows


def taobao(workdir: Path) -> list[dict]:
    metrics_path = workdir / "metrics.json"
    if not metrics_path.is_file():
        import ecomjax

        ecomjax.train(ROOT / "configs/ranker_taobao.yaml", workdir=str(workdir), train__progress=False)
    m = json.loads(metrics_path.read_text())
    stages = m.get("stages", {})
    rows = []
    for name, values in [*m.get("baselines", {}).items(), *m.get("ablations", {}).items(),
                         ("multi_behavior (cart + buy)", m)]:
        test = values.get("test", values)
        seconds = m["train_seconds"] if name.startswith("multi_behavior") else stages.get(name, {}).get("train_seconds")
        rows.append({"model": name, "hr@10": test.get("hr@10"), "ndcg@10": test.get("ndcg@10"),
                     "train_seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(runs_directory() / "bench_ranker"), help="where the trained workdirs go")
    parser.add_argument("--epochs", type=int, help="override train.epochs (quick checks)")
    parser.add_argument("--taobao-workdir", default=str(runs_directory() / "ranker_taobao"))
    parser.add_argument("--skip-taobao", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="read the metrics of workdirs already trained under --runs instead of training")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: DCN-v2 + MMoE + ESMM with its baselines on a 600-request world, tiny towers, "
                             "40 timed calls; no Taobao")
    args = parser.parse_args()
    require_scratch(args.quick)
    runs = ROOT / args.runs
    args.skip_taobao = args.skip_taobao or args.quick
    quality, workdirs = synthetic(runs, args.epochs, args.reuse, TINY_RANKER if args.quick else None,
                                  {name: VARIANTS[name] for name in list(VARIANTS)[:1]} if args.quick else VARIANTS)
    print_table(quality, QUALITY_COLUMNS, title="Synthetic impressions: test quality per model and head")
    timing = latency(workdirs, (40, 12) if args.quick else (2000, 300))
    print_table(timing, ["model", "batch", "p50_ms", "p99_ms", "calls", "first_call_s"],
                title="Inference latency, all heads (ms)")
    payload = {"synthetic": quality, "latency": timing,
               "protocol": {"config": "configs/ranker_synthetic.yaml", "split": "by request 70/10/20",
                            "cvr_auc_all": "pCVR over every test impression against the counterfactual would_buy"}}
    if not args.skip_taobao:
        payload["taobao"] = taobao(ROOT / args.taobao_workdir)
        print_table(payload["taobao"], ["model", "hr@10", "ndcg@10", "train_seconds"],
                    title="Taobao: buy HR@10 / NDCG@10 on buy.test (full ranking)")
    else:  # keep the last Taobao measurement, saying when it was taken
        previous = results_directory() / "ranker.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            if "taobao" in old["results"]:
                payload["taobao"] = old["results"]["taobao"]
                payload["taobao_measured_utc"] = old["results"].get("taobao_measured_utc", old["timestamp_utc"])
    path = write_results("ranker", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
