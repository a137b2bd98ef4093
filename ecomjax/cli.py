"""Command line: ``ecomjax train CONFIG [key=value ...]``, ``ecomjax eval WORKDIR``, ``ecomjax data``,
``ecomjax search WORKDIR "query"``."""

from __future__ import annotations

import argparse
import json
import sys

from ecomjax.config import ConfigError, load_config, parse_override
from ecomjax.data.files import DataFormatError

_SUMMARY_KEYS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")


def _summary(metrics: dict) -> str:
    lines = []
    for split in ("valid", "test"):
        if split in metrics:
            values = "  ".join(f"{k} {metrics[split][k]:.4f}" for k in _SUMMARY_KEYS if k in metrics[split])
            lines.append(f"{split:5s}  {values}")
    lines.append(
        f"train {metrics.get('train_seconds', 0):.1f}s over {metrics.get('epochs_run')} epochs "
        f"(best epoch {metrics.get('best_epoch')}, stop: {metrics.get('stop_reason')})"
    )
    return "\n".join(lines)


def _search_summary(metrics: dict) -> str:
    lines = [f"{'model':14s} {'RMSE':>7s} {'NDCG@10':>8s}"]
    for name, values in metrics.items():
        if isinstance(values, dict) and ("rmse" in values or "ndcg@10" in values):
            rmse = f"{values['rmse']:.4f}" if "rmse" in values else "-"
            ndcg = f"{values['ndcg@10']:.4f}" if "ndcg@10" in values else "-"
            lines.append(f"{name:14s} {rmse:>7s} {ndcg:>8s}")
    return "\n".join(lines)


def _ranker_summary(metrics: dict) -> str:
    """One line per model: click AUC / GAUC / log loss, pCTCVR AUC, pCVR AUC, dwell RMSE, NDCG@10."""
    rows = [("model", metrics["test"]), *(((name, m) for name, m in metrics.get("baselines", {}).items())),
            *([("bayes (truth)", metrics["bayes"])] if "bayes" in metrics else [])]
    lines = [f"{'':16s} {'ctr auc':>8s} {'gauc':>7s} {'logloss':>8s} {'ctcvr auc':>9s} {'cvr auc*':>8s} "
             f"{'dwell rmse':>10s} {'ndcg@10':>8s}"]

    def cell(m: dict, head: str, key: str, width: int) -> str:
        value = m.get(head, {}).get(key)
        return f"{value:{width}.4f}" if isinstance(value, float) else f"{'-':>{width}s}"

    for name, m in rows:
        ndcg_key = "ndcg@10_true" if "ndcg@10_true" in m.get("satisfaction", {}) else "ndcg@10_observed"
        cvr_key = "auc_all" if "auc_all" in m.get("cvr", {}) else "auc_clicked"
        lines.append(f"{(metrics['model'] if name == 'model' else name):16s} {cell(m, 'click', 'auc', 8)} "
                     f"{cell(m, 'click', 'gauc', 7)} {cell(m, 'click', 'log_loss', 8)} "
                     f"{cell(m, 'purchase', 'auc', 9)} {cell(m, 'cvr', cvr_key, 8)} "
                     f"{cell(m, 'dwell', 'rmse_log', 10)} {cell(m, 'satisfaction', ndcg_key, 8)}")
    lines.append("* cvr auc over all impressions against the counterfactual label where known, else on clicks")
    if "train_seconds" in metrics:
        lines.append(f"train {metrics['train_seconds']:.1f}s, best epoch {metrics.get('best_epoch')} "
                     f"of {metrics.get('epochs_run')}")
    return "\n".join(lines)


def _multi_behavior_summary(metrics: dict) -> str:
    rows = [("model", metrics.get("test", {})), *metrics.get("ablations", {}).items(),
            *metrics.get("baselines", {}).items()]
    lines = [f"{'':14s} {'hr@10':>7s} {'ndcg@10':>8s}"]
    for name, m in rows:
        m = m.get("test", m)
        if "hr@10" in m:
            lines.append(f"{name:14s} {m['hr@10']:7.4f} {m['ndcg@10']:8.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ecomjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model from a YAML config")
    train_p.add_argument("config", nargs="?", help="YAML config (default: built-in synthetic quickstart)")
    train_p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    multi = train_p.add_argument_group(
        "multi-process (one process per host; see ecomjax.train.distributed)"
    )
    multi.add_argument("--coordinator", help="HOST:PORT of process 0 (or $JAX_COORDINATOR_ADDRESS)")
    multi.add_argument("--num-processes", type=int, help="processes in the run (or $JAX_NUM_PROCESSES)")
    multi.add_argument("--process-id", type=int, help="this process, 0-based (or $JAX_PROCESS_ID)")
    multi.add_argument("--distributed", action="store_true",
                       help="let JAX detect the cluster (Cloud TPU slices, SLURM, Open MPI)")
    eval_p = sub.add_parser("eval", help="re-evaluate a trained workdir")
    eval_p.add_argument("workdir")
    eval_p.add_argument("overrides", nargs="*")
    data_p = sub.add_parser("data", help="describe the dataset a config resolves to")
    data_p.add_argument("config", nargs="?")
    data_p.add_argument("overrides", nargs="*")
    search_p = sub.add_parser("search", help="answer a query with a trained search workdir")
    search_p.add_argument("workdir")
    search_p.add_argument("query", nargs="+")
    search_p.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    search_p.add_argument("--reranker", choices=["gbdt_fast", "gbdt", "cross_encoder", "bi_encoder"],
                          help="override the workdir's serve.reranker")
    search_p.add_argument("--recommender", help="workdir of a trained next-item model (personalisation)")
    search_p.add_argument("--history", help="comma-separated product ids the user interacted with, oldest first")
    search_p.add_argument("--personalization-weight", type=float, default=0.5,
                          help="weight of the z-scored recommender score (default 0.5)")
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            config_path = args.config
            if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
                args.overrides.insert(0, config_path)  # `ecomjax train key=value` with no config
                config_path = None
            from ecomjax.config import declared_task

            task = declared_task(config_path)
            if task in ("search", "ranker", "multi_behavior"):
                import ecomjax

                run = ecomjax.train(config_path, overrides=dict(parse_override(o) for o in args.overrides))
                summary = {"search": _search_summary, "ranker": _ranker_summary,
                           "multi_behavior": _multi_behavior_summary}[task]
                print(summary(run.metrics))
                print(f"wrote {run.workdir}/metrics.json")
                return 0
            config = load_config(config_path, args.overrides)
            from ecomjax.train.distributed import initialize

            initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
            from ecomjax.train.loop import train_next_item

            result = train_next_item(config)
            from ecomjax.train.distributed import is_primary

            if is_primary():
                print(_summary(result.metrics))
                print(f"wrote {result.workdir}/metrics.json")
        elif args.command == "eval":
            from pathlib import Path

            import ecomjax
            from ecomjax.search.config import is_search_config

            overrides = dict(parse_override(o) for o in args.overrides)
            metrics = ecomjax.evaluate(args.workdir, **overrides)
            from ecomjax.config import declared_task

            if declared_task(Path(args.workdir) / "config.yaml") == "ranker":
                print(_ranker_summary({"model": "model", **metrics}))
                print(f"wrote {args.workdir}/eval/metrics.json")
            elif is_search_config(Path(args.workdir) / "config.yaml"):
                print(_search_summary(metrics))
                print(f"wrote {args.workdir}/eval/metrics.json")
            else:
                print(_summary(metrics))
        elif args.command == "search":
            from ecomjax.serve import SearchPipeline

            if bool(args.recommender) != bool(args.history):
                raise ValueError("--recommender and --history go together: personalisation needs both")
            personalizer = None
            if args.recommender:
                from ecomjax.serve import HistoryPersonalizer

                personalizer = HistoryPersonalizer(args.recommender)
            pipeline = SearchPipeline.load(args.workdir, personalizer=personalizer)
            history = args.history.split(",") if args.history else None
            if history:
                pipeline.config.serve.personalization_weight = args.personalization_weight
            result = pipeline.search(" ".join(args.query), user=history, k=args.k, reranker=args.reranker)
            for rank, (pid, title, score) in enumerate(zip(result.product_ids, result.titles, result.scores,
                                                           strict=True), start=1):
                print(f"{rank:2d}. {score:6.3f}  {pid:>10s}  {title}")
            stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items())
            print(f"ms: {stages} (first query: includes warm-up)")
        elif args.command == "data":
            from ecomjax.search.config import is_search_config

            if is_search_config(args.config):
                from ecomjax.search.config import load_search_config
                from ecomjax.search.train import load_splits

                data, splits = load_splits(load_search_config(args.config, args.overrides))
                print(json.dumps({"source": data.source, "pairs": len(data), "queries": len(data.query_groups()[0]),
                                  "products": len(data.catalogue()[0]),
                                  "mean_relevance": round(float(data.relevance.mean()), 4),
                                  "splits": {k: len(v) for k, v in splits.items()}}, indent=2))
                return 0
            from ecomjax.data import load_sequences

            config = load_config(args.config, args.overrides)
            ds = load_sequences(config.data)
            lengths = ds.lengths
            print(json.dumps({
                "name": ds.name, "users": ds.num_users, "items": ds.num_items,
                "interactions": int(lengths.sum()), "mean_length": round(float(lengths.mean()), 2),
                "max_length": int(lengths.max()),
            }, indent=2))
    except (ConfigError, DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"ecomjax: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecomjax: interrupted; checkpoint saved, run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
