"""Product search on the Home Depot file: quality per model, ANN recall, latency per stage.

Reads a workdir trained by ``ecomjax train configs/search_homedepot.yaml`` (``--workdir``) and
writes ``benchmarks/results/search.json``:

1. **Quality** on the held-out test queries: RMSE and per-query NDCG@10 for the mean predictor,
   BM25, frozen-encoder cosine, bi-encoder, cross-encoder and both GBDT re-rankers (from the
   workdir's ``metrics.json``, computed by the training run on the same split).
2. **ANN**: HNSW top-100 over the whole catalogue against exact top-100 in JAX, recall@100 and
   per-query time, for a few ``ef_search`` values; the test queries' tower vectors.
3. **Latency** of ``SearchPipeline.search`` (normalise -> encode -> HNSW top-100 -> features ->
   re-rank -> top-10), p50/p95/p99 per stage and end to end, over >= 1,000 warm test queries at
   batch 1 and >= 1,000 queries in batches of 32; first-call (compile) time reported apart. The
   cross-encoder re-ranker is timed on a few queries to show what the fast path avoids.

Run it alone: the machine has two cores, and a second job doubles every latency.

    python -m benchmarks.search --workdir runs/search_homedepot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.smoke import require_scratch
from ecomjax.bench.report import print_table, runs_directory, write_results
from ecomjax.bench.timing import percentiles

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("encode", "ann", "features", "rerank", "personalize", "total")
QUALITY_ROWS = ("mean_predictor", "bm25", "cosine", "bi_encoder", "cross_encoder", "gbdt_fast", "gbdt")


def quality(workdir: Path) -> list[dict]:
    metrics = json.loads((workdir / "metrics.json").read_text())
    rows = []
    for name in QUALITY_ROWS:
        if name in metrics:
            rows.append({"model": name, "rmse": metrics[name].get("rmse"), "ndcg@10": metrics[name].get("ndcg@10"),
                         "queries": metrics[name].get("queries")})
    return rows


def test_queries(pipeline) -> list[str]:
    from ecomjax.tasks.relevance import load_splits

    data, splits = load_splits(pipeline.config)
    return sorted(set(data.queries[splits["test"]]))


def ann_recall(pipeline, queries: list[str], ef_values: list[int], k: int = 100) -> list[dict]:
    from ecomjax.serve.ann import exact_top_k, recall_at_k

    _, _, tower = pipeline.encode_queries(queries)
    t0 = time.perf_counter()
    _, exact = exact_top_k(tower, pipeline.product_vectors, k)
    exact_ms = 1e3 * (time.perf_counter() - t0) / len(queries)
    rows = []
    saved = pipeline.index.ef_search
    for ef in ef_values:
        pipeline.index.ef_search = ef
        per_query = []
        found = []
        for vector in tower:
            t0 = time.perf_counter()
            _, index = pipeline.index.search(vector[None], k)
            per_query.append(1e3 * (time.perf_counter() - t0))
            found.append(index[0])
        p = percentiles(per_query)
        rows.append({"ef_search": ef, "recall@100": recall_at_k(np.array(found), exact),
                     "p50_ms": p[50.0], "p99_ms": p[99.0],
                     "exact_jax_ms_per_query": exact_ms, "queries": len(queries)})
    pipeline.index.ef_search = saved
    return rows


def latency(pipeline, queries: list[str], batch: int, total: int, reranker: str) -> dict:
    """Per-stage percentiles over ``total`` queries in batches of ``batch`` (one sample per call)."""
    batches = [[queries[(i * batch + j) % len(queries)] for j in range(batch)] for i in range(-(-total // batch))]
    t0 = time.perf_counter()
    pipeline.search_batch(batches[0], k=10, reranker=reranker)  # compile this shape
    first_call_ms = 1e3 * (time.perf_counter() - t0)
    for warm in batches[1:6]:
        pipeline.search_batch(warm, k=10, reranker=reranker)
    samples = {stage: [] for stage in STAGES}
    for chunk in batches:
        timings = pipeline.search_batch(chunk, k=10, reranker=reranker)[0].timings_ms
        for stage in STAGES:
            samples[stage].append(timings[stage])
    row = {"batch": batch, "reranker": reranker, "queries": len(batches) * batch, "calls": len(batches),
           "first_call_ms": first_call_ms}
    for stage in STAGES:
        p = percentiles(samples[stage])
        row.update({f"{stage}_p50": p[50.0], f"{stage}_p95": p[95.0], f"{stage}_p99": p[99.0]})
    row["queries_per_s"] = row["queries"] / (sum(samples["total"]) / 1e3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(runs_directory() / "search_homedepot"))
    parser.add_argument("--queries", type=int, default=1000, help="warm queries per latency row (>= 1000)")
    parser.add_argument("--batch-calls", type=int, default=320, help="calls of 32 queries for the batch row")
    parser.add_argument("--cross-queries", type=int, default=20, help="queries timed with the cross-encoder")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke: 20 queries per latency row, 2 batch calls")
    args = parser.parse_args()
    require_scratch(args.quick)
    if args.quick:
        args.queries, args.batch_calls, args.cross_queries = 20, 2, 0

    from ecomjax.serve import SearchPipeline

    workdir = Path(args.workdir)
    t0 = time.perf_counter()
    pipeline = SearchPipeline.load(workdir)
    load_s = time.perf_counter() - t0
    queries = test_queries(pipeline)
    results: dict = {"workdir": str(workdir), "catalogue": len(pipeline.ids), "test_queries": len(queries),
                     "load_seconds": load_s}

    results["quality"] = quality(workdir)
    print_table(results["quality"], ["model", "rmse", "ndcg@10", "queries"],
                title="Quality on held-out queries (Home Depot, split by query)",
                formats={"rmse": ".4f", "ndcg@10": ".4f"})

    results["ann"] = ann_recall(pipeline, queries, [100, 128, 256])
    print_table(results["ann"], ["ef_search", "recall@100", "p50_ms", "p99_ms", "exact_jax_ms_per_query"],
                title=f"HNSW vs exact top-100 over {len(pipeline.ids)} products ({len(queries)} test queries)",
                formats={"recall@100": ".4f", "p50_ms": ".3f", "p99_ms": ".3f", "exact_jax_ms_per_query": ".3f"})

    if not args.skip_latency:
        rows = [latency(pipeline, queries, 1, args.queries, "gbdt_fast"),
                latency(pipeline, queries, 32, 32 * args.batch_calls, "gbdt_fast")]
        if pipeline.models.cross_encoder is not None and args.cross_queries:
            rows.append(latency(pipeline, queries, 1, args.cross_queries, "gbdt"))
        results["latency"] = rows
        columns = ["batch", "reranker", "queries"] + [f"{s}_p50" for s in STAGES[:-2]] + \
            ["total_p50", "total_p95", "total_p99", "first_call_ms", "queries_per_s"]
        print_table(rows, columns, title="Latency per call, ms (top-10 of 100 re-ranked candidates)",
                    formats={c: ".2f" for c in columns if c.endswith(("_p50", "_p95", "_p99", "_ms"))})
    path = write_results("search", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
