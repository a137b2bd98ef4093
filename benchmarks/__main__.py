"""Every benchmark suite from one command, then the docs' tables and plots regenerated from the JSON.

    python -m benchmarks --list                 # the suites, what each measures, its full command
    python -m benchmarks all                    # every suite at the sizes the docs quote (hours)
    python -m benchmarks ranker search          # some suites
    python -m benchmarks all --quick            # a few-minute smoke of every suite at tiny sizes

A full run writes ``benchmarks/results/NAME.json`` per suite and then rewrites the generated
blocks of ``README.md`` and ``docs/results/`` (``benchmarks.summarize --write``). A suite that
needs a trained run it does not train itself (search and serving load workdirs) gets it trained
first, with the shipped config, when the workdir is missing.

``--quick`` runs the same code paths on slices of the real files with tiny models, in scratch
directories (``--out``, a temporary one by default): ``$ECOMJAX_BENCH_RESULTS`` and
``$ECOMJAX_BENCH_RUNS`` point every suite there, so the curated results are never touched. It
then renders every docs table from the smoke's JSON, which proves the generators read what the
suites write today. The default tests run it.

Each suite runs in its own process (the sharding suite needs 8 CPU devices set before JAX starts;
a crash in one suite is reported and the others still run) and one after another: the machine's
cores are the benchmark's, a second job would change every timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Suite:
    """One suite: its module, the argument lists of the runs the docs quote (one process each),
    and the trained workdirs (``runs/``-relative path -> ``ecomjax train`` words) it loads."""

    module: str
    about: str
    runs: tuple[tuple[str, ...], ...] = ((),)
    needs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    quick: tuple[str, ...] = ()  # the words of the one --quick process (default: the first run's)


SUITES: dict[str, Suite] = {
    "recommendation": Suite("sequential", "SASRec / GRU4Rec on Beauty and ML-1M against the published numbers"),
    "peers": Suite("peer_recbole", "SASRec on Beauty, ecomjax against RecBole on this machine (time to quality)"),
    "temporal": Suite("temporal_split", "leave-one-out against a global temporal split on timestamped Beauty"),
    "multimodal": Suite("multimodal", "title / photo fusion: Fashion attributes and retrieval, Beauty text vs ID",
                        runs=(("--skip-beauty",),)),
    "search": Suite("search", "Home Depot search: quality per model, HNSW recall, latency per stage",
                    needs=(("search_homedepot", ("configs/search_homedepot.yaml",)),)),
    "ranker": Suite("ranker", "satisfaction ranker: heads against the Bayes ceiling, ESMM, latency; Taobao"),
    "efficiency": Suite("efficiency", "int8 / bf16 / pruning / QAT / distillation / LoRA: quality, bytes, latency"),
    "sharding": Suite("sharding", "per-device memory and step time over mesh shapes; a 10M-item table"),
    "data_scale": Suite("data_scale", "out-of-core preparation and streaming of 1e6-1e8 interactions"),
    "tuning": Suite("tuning", "ecomjax tune on a wall-time budget against the shipped configs",
                    runs=(("sasrec",), ("ranker",), ("search_gbdt",)), quick=("ranker",)),
    "serving": Suite("serving", "ecomjax serve under load: p50/p99, throughput, malformed requests",
                     needs=(("search_homedepot", ("configs/search_homedepot.yaml",)),
                            ("serve/sasrec_beauty", ("configs/sasrec_beauty.yaml",)),
                            ("bench_ranker/dcnv2_mmoe_esmm", ("configs/ranker_synthetic.yaml",)))),
}
# the multimodal Beauty section reads 22 SASRec runs (three seeds of each width); it is rerun with
# --train-beauty by hand, and a full run keeps its last measurement


def _quick_needs(path: str) -> list[str]:
    """The ``ecomjax train`` words of a prerequisite at smoke size."""
    from benchmarks import smoke

    if path.startswith("search"):
        return ["configs/search_homedepot.yaml", *smoke.as_cli(smoke.search_overrides())]
    if path.startswith("serve"):
        return ["configs/sasrec_beauty.yaml", *smoke.as_cli(smoke.beauty_overrides())]
    return ["configs/ranker_synthetic.yaml", *smoke.as_cli(smoke.TINY_RANKER), "baselines.gbdt=false"]


def _train_missing(suite: Suite, quick: bool, env: dict[str, str], runs: Path) -> None:
    for path, words in suite.needs:
        workdir = runs / path
        if (workdir / "model.json").is_file():
            continue
        if quick:
            words = tuple(_quick_needs(path))
        print(f"[benchmarks] training the missing {workdir}: ecomjax train {' '.join(words)}", flush=True)
        subprocess.run([sys.executable, "-m", "ecomjax", "train", words[0], f"workdir={workdir}", *words[1:]],
                       cwd=ROOT, env=env, check=True)


def run_suite(name: str, quick: bool, env: dict[str, str], runs: Path) -> float:
    """Run one suite (all its processes); returns the seconds it took. Raises on a failed process."""
    suite = SUITES[name]
    started = time.perf_counter()
    _train_missing(suite, quick, env, runs)
    for words in [suite.quick or suite.runs[0]] if quick else suite.runs:
        command = [sys.executable, "-m", f"benchmarks.{suite.module}", *words, *(["--quick"] if quick else [])]
        print(f"[benchmarks] {name}: python {' '.join(command[1:])}", flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def render_docs(results: Path) -> list[str]:
    """Every generated docs block from the JSON in ``results``; returns the blocks that came out empty."""
    from benchmarks import summarize

    os.environ["ECOMJAX_BENCH_RESULTS"] = str(results)
    return [name for name, table in summarize.TABLES.items() if not table().strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"suites, or all: {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes in scratch directories (a smoke)")
    parser.add_argument("--out", type=Path, help="--quick: keep the scratch results and runs here")
    parser.add_argument("--list", action="store_true", help="name the suites and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, suite in SUITES.items():
            commands = "; ".join(f"python -m benchmarks.{suite.module} {' '.join(w)}".strip() for w in suite.runs)
            print(f"{name:15} {suite.about}\n{'':15} {commands}")
        return 0
    names = list(SUITES) if "all" in args.names else args.names
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from all, {', '.join(SUITES)}")
    if args.out and not args.quick:
        parser.error("--out is for --quick (a full run writes benchmarks/results)")

    os.environ.setdefault("ECOMJAX_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    scratch = None
    if args.quick:  # this process too: it slices the data files for the prerequisites
        scratch = (args.out or Path(tempfile.mkdtemp(prefix="ecomjax-bench-quick-"))).resolve()
        os.environ.update(ECOMJAX_BENCH_RESULTS=str(scratch / "results"), ECOMJAX_BENCH_RUNS=str(scratch / "runs"),
                          TQDM_DISABLE="1")
    env = dict(os.environ)
    runs = Path(env.get("ECOMJAX_BENCH_RUNS") or ROOT / "runs")
    seconds, failed = {}, []
    for name in names:
        try:
            seconds[name] = run_suite(name, args.quick, env, runs)
        except subprocess.CalledProcessError as error:
            failed.append(name)
            print(f"[benchmarks] {name} FAILED: {' '.join(map(str, error.cmd[1:]))} exited {error.returncode}",
                  flush=True)
    for name, s in seconds.items():
        print(f"[benchmarks] {name:15} {s:7.1f} s")
    if args.quick:
        empty = render_docs(scratch / "results") if not failed and set(names) == set(SUITES) else []
        if empty:
            print(f"[benchmarks] docs blocks empty from the smoke's JSON: {empty}")
            failed.append("docs")
        print(f"[benchmarks] smoke results and runs in {scratch}")
    elif not failed:
        subprocess.run([sys.executable, "-m", "benchmarks.summarize", "--write"], cwd=ROOT, env=env, check=True)
    if failed:
        print(f"[benchmarks] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
