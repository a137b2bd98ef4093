"""Command line: ``ecomjax train CONFIG [key=value ...]``, ``ecomjax eval WORKDIR``, ``ecomjax data
describe|prepare CONFIG``, ``ecomjax data download NAME``, ``ecomjax tune CONFIG --space SPACE``,
``ecomjax search WORKDIR "query"``, ``ecomjax serve WORKDIR [WORKDIR ...]``, ``ecomjax models``.

Parsing imports nothing heavy (no JAX), so ``ecomjax --help`` answers at once; each command
imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from ecomjax.errors import InputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecomjax", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"ecomjax {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model from a YAML config (any task)")
    train_p.add_argument("config", nargs="?", help="YAML config (default: built-in synthetic quickstart)")
    train_p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    multi = train_p.add_argument_group("multi-process (one process per host; see ecomjax.train.distributed)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0 (or $JAX_COORDINATOR_ADDRESS)")
    multi.add_argument("--num-processes", type=int, help="processes in the run (or $JAX_NUM_PROCESSES)")
    multi.add_argument("--process-id", type=int, help="this process, 0-based (or $JAX_PROCESS_ID)")
    multi.add_argument("--distributed", action="store_true",
                       help="let JAX detect the cluster (Cloud TPU slices, SLURM, Open MPI)")
    eval_p = sub.add_parser("eval", help="re-score a trained workdir into WORKDIR/eval/metrics.json")
    eval_p.add_argument("workdir")
    eval_p.add_argument("overrides", nargs="*", help="data.* / eval.* key=value overrides")
    data_p = sub.add_parser("data", help="describe a config's data, prepare a large log into shards, or "
                            "download a public dataset")
    data_sub = data_p.add_subparsers(dest="data_command", required=True)
    describe_p = data_sub.add_parser("describe", help="what the data of a config resolves to (counts, steps)")
    describe_p.add_argument("config", nargs="?")
    describe_p.add_argument("overrides", nargs="*")
    prepare_p = data_sub.add_parser("prepare", help="clean a log (CSV/TSV/Parquet) out of core into sequence "
                                    "shards; train on them with data.format=shards data.path=OUT")
    prepare_p.add_argument("config", help="config whose data.* section names the log, columns and steps")
    prepare_p.add_argument("overrides", nargs="*")
    prepare_p.add_argument("--out", required=True, help="directory for the shards (must not hold shards)")
    prepare_p.add_argument("--bucket-mb", type=float, default=64,
                           help="input megabytes per bucket: bounds peak memory (default 64)")
    prepare_p.add_argument("--engine", choices=["local", "beam"], default="local",
                           help="local: this process; beam: Apache Beam pipelines (the beam extra)")
    prepare_p.add_argument("--beam-args", default="", help="Beam pipeline options, e.g. '--runner "
                           "DataflowRunner --project P --region R --temp_location gs://B/tmp' (default: DirectRunner)")
    download_p = data_sub.add_parser("download", help="fetch a public dataset into the data directory, checked "
                                     "by sha256 (no NAME or --list: the datasets)")
    download_p.add_argument("name", nargs="?", help="dataset (beauty, ml-1m, taobao, ...; see --list)")
    download_p.add_argument("--list", action="store_true", help="print the datasets: files, size, licence")
    download_p.add_argument("--dir", help="data directory to fill (default: $ECOMJAX_DATA_DIR, else "
                            "$ECOMJAX_CACHE_DIR/data, i.e. ~/.cache/ecomjax/data)")
    download_p.add_argument("--mirror", help="base URL replacing each file's https://HOST: files are read from "
                            "MIRROR/HOST/PATH (default: $ECOMJAX_DOWNLOAD_MIRROR)")
    download_p.add_argument("--force", action="store_true", help="replace files in place whose hash differs")
    tune_p = sub.add_parser("tune", help="search hyperparameters of a config with Optuna (any task)")
    tune_p.add_argument("config", help="YAML config of the runs to tune")
    tune_p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    tune_p.add_argument("--space", required=True, help="YAML search space (dotted keys -> distributions)")
    tune_p.add_argument("--trials", type=int, required=True, help="finished trials in the study (a resumed "
                        "tune continues to this total)")
    tune_p.add_argument("--jobs", type=int, default=1, help="trials at a time (CPU: cores divided between them)")
    tune_p.add_argument("--dir", dest="tune_dir", help="tune directory (default: WORKDIR_tune beside the "
                        "config's workdir)")
    tune_p.add_argument("--study", dest="study_name", help="study name (default: the tune directory's name)")
    tune_p.add_argument("--storage", help="SQLAlchemy URL of the study database (default: SQLite in the tune "
                        "directory; postgresql://... to share a study between machines)")
    tune_p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid", "cmaes"])
    tune_p.add_argument("--pruner", default="median", choices=["median", "hyperband", "asha", "none"])
    tune_p.add_argument("--startup-trials", type=int, default=3, help="finished trials before the median "
                        "pruner prunes (default 3)")
    tune_p.add_argument("--warmup-epochs", type=int, default=0, help="epochs a trial runs before it can be "
                        "pruned (default 0: from its first evaluation)")
    tune_p.add_argument("--timeout", type=float, help="stop after this many seconds (running trials are "
                        "checkpointed and queued again)")
    tune_p.add_argument("--seed", type=int, default=0, help="sampler seed (the runs keep the config's seed)")
    tune_p.add_argument("--top", type=int, default=1, help="score the test split of the best K trials "
                        "(default 1; 3 gives a stability column)")
    tune_p.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not queue the config's own values as the first trial")
    tune_p.add_argument("--trials-per-device", type=int, default=1, help="GPU: trials sharing one device")
    tune_p.add_argument("--summary", action="store_true", help="print the per-trial table at the end")
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
    sub.add_parser("models", help="the registered tasks and the models each trains, one line each")
    serve_p = sub.add_parser("serve", help="HTTP service for trained runs: /search, /recommend, /rank, "
                             "/items, /events, /healthz, /metrics")
    serve_p.add_argument("workdirs", nargs="+", help="trained runs (relevance, next_item, ranker; one of each)")
    serve_p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=8000)
    serve_p.add_argument("--max-batch", type=int, default=32, help="requests per model call at most (default 32)")
    serve_p.add_argument("--window-ms", type=float, default=2.0,
                         help="how long a request waits for others to join its batch (default 2 ms)")
    serve_p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request is answered 503")
    serve_p.add_argument("--token-file", help="file holding the bearer token /items and /events require")
    serve_p.add_argument("--state-dir", help="serving state (live items, sessions; default FIRST_WORKDIR/serving)")
    serve_p.add_argument("--access-log", default="-", help="JSON access-log lines: '-' stderr (default), a "
                         "file, or '' for none")
    return parser


def _version() -> str:
    """The installed distribution's version (``pyproject.toml``), without importing ecomjax's code."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ecomjax")
    except PackageNotFoundError:
        return "unknown (not installed; run `pip install -e .`)"


def _models(args) -> None:
    from ecomjax.tasks import MODELS, SUMMARIES, TASKS

    width = max(len(choice) for choices in MODELS.values() for choice in choices) + 2
    for task in TASKS:
        print(f"task: {task}  {SUMMARIES[task]}")
        for choice, line in MODELS[task].items():
            print(f"  {choice:{width}s}{line}")


def _train(args) -> None:
    from ecomjax.config import load_config
    from ecomjax.train.distributed import initialize, is_primary

    config_path = args.config
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        args.overrides.insert(0, config_path)  # `ecomjax train key=value` with no config
        config_path = None
    config = load_config(config_path, args.overrides)
    initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    from ecomjax.train.loop import train

    run = train(config)
    if is_primary():
        print(run.task.summary(run.metrics))
        print(f"wrote {run.workdir}/metrics.json")


def _eval(args) -> None:
    from ecomjax.config import parse_override
    from ecomjax.run import evaluate, load

    metrics = evaluate(args.workdir, dict(parse_override(o) for o in args.overrides))
    print(load(args.workdir).task.summary(metrics))
    print(f"wrote {args.workdir}/eval/metrics.json")


def _data(args) -> None:
    if args.data_command == "download":
        from ecomjax.data import download as dl

        if args.list or not args.name:
            print(dl.table())
            return

        def report(outcome) -> None:
            expected = outcome.file.expected
            checked = f"  sha256 {expected[0]}" if expected else ""
            print(f"{outcome.status:17s} {outcome.target}{checked}", flush=True)
            if outcome.status == "missing" and not outcome.file.required:
                print("\n".join(f"  {step}" for step in outcome.steps))

        try:
            dl.download(args.name, args.dir, mirror=args.mirror, force=args.force, report=report)
        except dl.ManualDownloadError as exc:
            print("\n".join(exc.steps))
            raise
        return
    from ecomjax.config import load_config

    config = load_config(args.config, args.overrides)
    if args.data_command == "describe":
        from ecomjax.tasks import task_class

        print(json.dumps({"task": config.task, **task_class(config.task)(config).describe_data()}, indent=2))
        return
    import shlex

    from ecomjax.data.source import prepare_out_of_core

    report = prepare_out_of_core(config.data, args.out, bucket_bytes=int(args.bucket_mb * 2**20), engine=args.engine,
                                 beam_args=shlex.split(args.beam_args))
    for step in report["steps"]:
        print(f"{step['step']:45s} {step.get('interactions', ''):>12}")
    final = report["final"]
    print(f"{final['sequences']} sequences, {final['items']} items, {final['interactions']} interactions in "
          f"{report['buckets']} shards under {args.out}\ntrain on them with: data.format=shards data.path={args.out}")


def _tune(args) -> None:
    from ecomjax.config import parse_override
    from ecomjax.tuning import tune
    from ecomjax.tuning.report import markdown, summary_text

    result = tune(args.config, args.space, trials=args.trials, jobs=args.jobs,
                  overrides=dict(parse_override(o) for o in args.overrides), tune_dir=args.tune_dir,
                  study_name=args.study_name, storage=args.storage, sampler=args.sampler, pruner=args.pruner,
                  startup_trials=args.startup_trials, warmup_epochs=args.warmup_epochs, timeout=args.timeout,
                  seed=args.seed, top=args.top, baseline=args.baseline, trials_per_device=args.trials_per_device)
    if args.summary:
        print(markdown(result.report))
    print(summary_text(result.report))
    print(f"wrote {result.tune_dir}/report.md, report.json" + (", best.yaml" if result.best else ""))


def _search(args) -> None:
    from ecomjax.serve import SearchPipeline

    if bool(args.recommender) != bool(args.history):
        raise InputError("--recommender and --history go together: personalisation needs both")
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


def _serve(args) -> None:
    from pathlib import Path

    from ecomjax.serve.app import ServeOptions
    from ecomjax.serve.server import read_token, serve

    options = ServeOptions(max_batch=args.max_batch, window_ms=args.window_ms, timeout_s=args.timeout,
                           token=read_token(args.token_file) if args.token_file else None,
                           state_dir=Path(args.state_dir) if args.state_dir else None)
    serve(args.workdirs, host=args.host, port=args.port, options=options, access_log=args.access_log or None)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (an ``EcomjaxError``) is one line naming the key, file,
    line or step, exit code 2; an interruption exits 130; anything else is a defect in ecomjax,
    also one line, exit code 1. ``--debug`` shows the traceback of either."""
    args = _parser().parse_args(argv)
    from ecomjax.errors import EcomjaxError, one_line

    if not args.debug:
        # After a failed save, orbax logs its background threads' failures with tracebacks and
        # tensorstore's late callbacks hit a closed event loop ("unraisable"); the error that
        # reaches here says what happened, in one line.
        for noisy in ("absl", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)

    try:
        {"train": _train, "eval": _eval, "data": _data, "tune": _tune, "search": _search,
         "serve": _serve, "models": _models}[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        saved = ("; checkpoint saved, run the same command again to resume"
                 if args.command in ("train", "tune") else "")
        print(f"ecomjax: interrupted{saved}", file=sys.stderr)
        return 130
    except EcomjaxError as exc:
        if args.debug:
            raise
        print(f"ecomjax: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"ecomjax: internal error: {type(exc).__name__}: {one_line(exc)} (a bug in ecomjax: "
              "`--debug` shows the traceback to report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
