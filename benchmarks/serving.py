"""Load test of ``ecomjax serve``: throughput and latency per endpoint at 1 / 8 / 32 concurrent
clients, a share of malformed requests, against the same models called in-process one request
at a time.

The service runs as a subprocess on 127.0.0.1 (a free port, nothing else listens) with the
trained search (Home Depot, fast GBDT re-ranker), recommendation (Beauty SASRec) and ranker runs.
Clients are aiohttp coroutines, each with a keep-alive connection, sending the next request as
soon as the previous is answered (closed loop); every level sends a fixed number of requests and
stops by itself (also at a time limit). Requests are real: Home Depot search terms, Beauty
users' histories (all but their last item), ranker candidates drawn from its schema. A share
(``--malformed``, 5%) is broken in rotating ways (bad JSON, a missing or misspelt field, a wrong
type, k out of range, an unknown item id, an unknown ranker field, a query that normalises to
nothing); each must be answered 4xx with an ``error`` that names the problem. The in-process
rate is measured after the service has stopped, so the two never share the CPU; the client
and the service do share it (this machine has 2 cores), so the HTTP numbers include the
client's own cost.

    python -m benchmarks.serving [--requests 1200] [--search runs/search_homedepot]
        [--recommend runs/serve/sasrec_beauty] [--rank runs/bench_ranker/dcnv2_mmoe_esmm]

Train the runs first: ``ecomjax train configs/search_homedepot.yaml``, ``ecomjax train
configs/sasrec_beauty.yaml workdir=runs/serve/sasrec_beauty``, ``python -m benchmarks.ranker``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.smoke import require_scratch
from ecomjax.bench.report import print_table, runs_directory, write_results
from ecomjax.data.files import resolve_data_path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"search": "search_homedepot", "recommend": "serve/sasrec_beauty",  # under runs/ ($ECOMJAX_BENCH_RUNS)
            "rank": "bench_ranker/dcnv2_mmoe_esmm"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- requests ---------------------------------------------------------------------------------------

def search_bodies(n: int, rng: random.Random) -> list[dict]:
    with resolve_data_path("homedepot/train.csv").open(encoding="latin-1") as f:
        terms = sorted({row["search_term"] for row in csv.DictReader(f)})
    return [{"query": rng.choice(terms), "k": 10} for _ in range(n)]


def recommend_bodies(n: int, rng: random.Random, workdir: str) -> list[dict]:
    """Histories of the users the recommender was trained on (its own data file, its ``max_len``)."""
    from ecomjax.config import load_config

    data = load_config(Path(workdir) / "config.yaml").data
    max_len = data.max_len
    lines = resolve_data_path(data.path).read_text().split("\n")
    users = [line.split()[1:] for line in lines if line.strip()]
    out = []
    for _ in range(n):
        items = rng.choice(users)[:-1][-max_len:]
        out.append({"history": [int(i) for i in items], "k": 10})
    return out


def rank_bodies(n: int, rng: random.Random, schema: dict, candidates: int = 20) -> list[dict]:
    bodies = []
    for _ in range(n):
        cands = []
        for _ in range(candidates):
            cands.append({"categorical": {f: rng.randrange(size) for f, size in schema["categorical"].items()},
                          "numeric": {f: rng.gauss(0, 1) for f in schema["numeric"]},
                          "sequences": {f: [rng.randrange(1, size) for _ in range(rng.randrange(1, length + 1))]
                                        for f, (size, length) in schema["sequences"].items()}})
        bodies.append({"candidates": cands})
    return bodies


def malformed(endpoint: str, good: dict, i: int) -> tuple[bytes, str]:
    """A broken body and the word its error must contain (what names the problem)."""
    kinds = ["json", "missing", "extra", "type", "range", "unknown"]
    kind = kinds[i % len(kinds)]
    if kind == "json":
        return b'{"query": "drill", "k": 1', "json"
    if endpoint == "search":
        table = {"missing": ({"k": 5}, "query"), "extra": ({**good, "kk": 1}, "kk"),
                 "type": ({**good, "k": "ten"}, "k"), "range": ({**good, "k": 0}, "k"),
                 "unknown": ({"query": "  ", "k": 5}, "query")}
    elif endpoint == "recommend":
        table = {"missing": ({"k": 5}, "history"), "extra": ({**good, "user": 1}, "user"),
                 "type": ({**good, "exclude_history": "maybe"}, "exclude_history"),
                 "range": ({**good, "k": 1000}, "k"), "unknown": ({"history": [987654321], "k": 5}, "987654321")}
    else:
        first = good["candidates"][0]
        table = {"missing": ({}, "candidates"), "extra": ({**good, "top": 3}, "top"),
                 "type": ({"candidates": [{**first, "numeric": "x"}]}, "numeric"),
                 "range": ({"candidates": []}, "candidates"),
                 "unknown": ({"candidates": [{**first, "categorical": {"no_such_field": 1}}]}, "no_such_field")}
    body, word = table[kind]
    return json.dumps(body).encode(), word


# --- the clients ------------------------------------------------------------------------------------

async def drive(url: str, jobs: list[tuple[bytes, str | None]], concurrency: int, limit_s: float) -> dict:
    import aiohttp

    latencies, statuses, bad_answers = [], {}, []
    queue = list(enumerate(jobs))[::-1]
    deadline = time.perf_counter() + limit_s
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(session):
        while queue and time.perf_counter() < deadline:
            _, (body, word) = queue.pop()
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                payload = await response.read()
                status = response.status
            latencies.append((time.perf_counter() - started, word is not None))
            statuses[status] = statuses.get(status, 0) + 1
            if word is not None and (not 400 <= status < 500 or word.lower() not in payload.decode().lower()):
                bad_answers.append((status, word, payload.decode()[:200]))
            if word is None and status != 200:
                bad_answers.append((status, "(good request)", payload.decode()[:200]))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    good = np.array([t for t, broken in latencies if not broken]) * 1e3
    return {"requests": len(latencies), "malformed": sum(b for _, b in latencies), "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(good, 50)), 2), "p95_ms": round(float(np.percentile(good, 95)), 2),
            "p99_ms": round(float(np.percentile(good, 99)), 2), "statuses": statuses,
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
            "wrong_answers": len(bad_answers), "wrong_examples": bad_answers[:3]}


def wait_healthy(base: str, process: subprocess.Popen, limit_s: float = 600) -> float:
    import urllib.request

    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the service was not ready within {limit_s} s")


# --- in-process, one at a time ------------------------------------------------------------------

def in_process(runs: dict, bodies: dict, n: int) -> dict:
    import ecomjax
    from ecomjax.serve.app import ServeOptions, Service

    out = {}
    with tempfile.TemporaryDirectory() as state:
        service = Service([ecomjax.load(runs[e]) for e in runs], ServeOptions(state_dir=Path(state)))
        calls = {"search": lambda b: service.search.pipeline.search(b["query"], k=b["k"]),
                 "recommend": lambda b: service.recommend.recommender.recommend(b["history"], k=b["k"]),
                 "rank": lambda b: service.rank.scorer.score(service.rank.features(_rank_request(b)))}
        for endpoint in runs:
            call = calls[endpoint]
            for body in bodies[endpoint][:20]:
                call(body)  # compile the one-request shapes
            times = []
            for body in bodies[endpoint][:n]:
                started = time.perf_counter()
                call(body)
                times.append(time.perf_counter() - started)
            times = np.array(times) * 1e3
            out[endpoint] = {"requests": len(times), "throughput_rps": round(1e3 / times.mean(), 1),
                             "p50_ms": round(float(np.percentile(times, 50)), 2),
                             "p99_ms": round(float(np.percentile(times, 99)), 2)}
    return out


def _rank_request(body):
    from ecomjax.serve.schemas import RankRequest

    return RankRequest(**body)


def ranker_schema(workdir: str) -> dict:
    import ecomjax

    schema = ecomjax.load(workdir).inference.schema
    return {"categorical": {f.name: f.vocab_size for f in schema.categorical}, "numeric": list(schema.numeric),
            "sequences": {f.name: (f.vocab_size, f.max_len) for f in schema.sequences}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for endpoint, default in DEFAULTS.items():
        parser.add_argument(f"--{endpoint}", default=str(runs_directory() / default), help=f"run behind /{endpoint} (default {default})")
    parser.add_argument("--requests", type=int, default=1200, help="requests per endpoint and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--malformed", type=float, default=0.05, help="share of broken requests (default 5%%)")
    parser.add_argument("--in-process", type=int, default=500, help="one-at-a-time calls per endpoint")
    parser.add_argument("--limit-s", type=float, default=300, help="time limit per level")
    parser.add_argument("--window-ms", type=float, default=2.0, help="the service's batch window (default 2)")
    parser.add_argument("--only", nargs="+", choices=list(DEFAULTS), help="load-test these endpoints only")
    parser.add_argument("--results", default="serving")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: 60 requests per endpoint at 1 and 4 clients, 20 in-process calls")
    args = parser.parse_args()
    require_scratch(args.quick)
    if args.quick:
        args.requests, args.concurrency, args.in_process, args.limit_s = 60, [1, 4], 20, 120
    runs = {e: str(ROOT / getattr(args, e)) for e in args.only or DEFAULTS}
    for endpoint, workdir in runs.items():
        if not (Path(workdir) / "model.json").is_file():
            sys.exit(f"--{endpoint} {workdir}: not a trained run (see the module docstring for the command)")
    rng = random.Random(0)
    n = args.requests
    bodies = {}
    if "search" in runs:
        bodies["search"] = search_bodies(n, rng)
    if "recommend" in runs:
        bodies["recommend"] = recommend_bodies(n, rng, runs["recommend"])
    if "rank" in runs:
        bodies["rank"] = rank_bodies(n, rng, ranker_schema(runs["rank"]))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state = tempfile.mkdtemp(prefix="ecomjax-serving-")
    log = Path(state) / "access.jsonl"
    command = [sys.executable, "-m", "ecomjax", "serve", *runs.values(), "--port", str(port),
               "--state-dir", state, "--access-log", str(log), "--window-ms", str(args.window_ms)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    import psutil

    server = psutil.Process(process.pid)
    rows, levels = [], {}
    try:
        startup = wait_healthy(base, process)
        every = max(round(1 / args.malformed), 1) if args.malformed else 0
        for endpoint in runs:
            for concurrency in args.concurrency:
                jobs = [(json.dumps(b).encode(), None) for b in bodies[endpoint]]
                if every:
                    for j, i in enumerate(range(every - 1, len(jobs), every)):
                        jobs[i] = malformed(endpoint, bodies[endpoint][i], j)
                asyncio.run(drive(f"{base}/{endpoint}", jobs[:20], concurrency, 30))  # connections up
                server_cpu, client_cpu = sum(server.cpu_times()[:2]), time.process_time()
                result = asyncio.run(drive(f"{base}/{endpoint}", jobs, concurrency, args.limit_s))
                # where the 2 cores go: the service's CPU and this client's, per request
                result["server_cpu_ms"] = round(1e3 * (sum(server.cpu_times()[:2]) - server_cpu) / result["requests"], 2)
                result["client_cpu_ms"] = round(1e3 * (time.process_time() - client_cpu) / result["requests"], 2)
                levels[f"{endpoint}@{concurrency}"] = result
                rows.append({"endpoint": f"/{endpoint}", "clients": concurrency, **result})
                print(f"/{endpoint} x{concurrency}: {result['throughput_rps']} req/s, p99 {result['p99_ms']} ms, "
                      f"5xx {result['server_errors']}, wrong {result['wrong_answers']} {result['wrong_examples']}",
                      flush=True)
        import urllib.request

        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics_text = r.read().decode()
    finally:
        process.terminate()
        exit_code = process.wait(60)
    baseline = in_process(runs, bodies, args.in_process)
    for row in rows:
        row["vs_in_process"] = round(row["throughput_rps"] / baseline[row["endpoint"][1:]]["throughput_rps"], 2)
    print_table(rows, ["endpoint", "clients", "requests", "malformed", "throughput_rps", "p50_ms", "p95_ms", "p99_ms",
                       "server_errors", "wrong_answers", "vs_in_process", "server_cpu_ms", "client_cpu_ms"],
                title="ecomjax serve under load")
    print_table([{"endpoint": f"/{e}", **v} for e, v in baseline.items()],
                ["endpoint", "requests", "throughput_rps", "p50_ms", "p99_ms"], title="in-process, one at a time")
    total = sum(r["requests"] for r in rows)
    targets = {"search_p99_le_60ms_at_8": ("search@8", lambda r: r["p99_ms"] <= 60),
               "search_throughput_ge_2x_in_process_at_8": (
                   "search@8", lambda r: r["throughput_rps"] >= 2 * baseline["search"]["throughput_rps"]),
               "recommend_p99_le_30ms_at_32": ("recommend@32", lambda r: r["p99_ms"] <= 30)}
    checks = {k: bool(v) for k, v in {
        **{name: test(levels[level]) for name, (level, test) in targets.items() if level in levels},
        "no_5xx": all(r["server_errors"] == 0 for r in rows),
        "every_malformed_answered_4xx_naming_it": all(r["wrong_answers"] == 0 for r in rows),
        "clean_exit_on_sigterm": exit_code == 0,
    }.items()}
    print(json.dumps(checks, indent=1))
    write_results(args.results, {
        "runs": runs, "startup_s": round(startup, 1), "total_requests": total,
        "total_malformed": sum(r["malformed"] for r in rows), "levels": levels, "in_process": baseline,
        "checks": checks, "service_exit_code": exit_code,
        "metrics_excerpt": [line for line in metrics_text.splitlines() if line.startswith("ecomjax_batch_size_sum")
                            or line.startswith("ecomjax_batch_size_count")],
    })


if __name__ == "__main__":
    main()
