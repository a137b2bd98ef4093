"""Print the README's results tables from ``benchmarks/results/*.json`` (so the README quotes files).

    python -m benchmarks.summarize
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def sequential_table() -> str:
    data = _load("sequential")
    if data is None:
        return ""
    lines = [
        "| config | test NDCG@10 | published | test HR@10 | published | epochs | wall (s) | $ / run | measured |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in data["results"]["runs"].values():
        pub = run["published"]
        lines.append(
            f"| `{run['config']}` | {run['test']['ndcg@10']:.4f} | {pub['ndcg@10']} ({pub['source']}) "
            f"| {run['test']['hr@10']:.4f} | {pub['hr@10']} | {run['epochs_run']} | {run['wall_seconds']:.0f} "
            f"| {run.get('usd_per_training_run', float('nan')):.4f} "
            f"| {str(run.get('measured_utc', data['timestamp_utc']))[:10]}, {run.get('cpu_model', '?')} |"
        )
    hw = data["hardware"]
    lines.append("")
    lines.append(f"`benchmarks/results/sequential.json`, {hw['cpu_count']}-core {hw['cpu_model']}, "
                 f"jax {hw['jax_version']}, {data['timestamp_utc']}; command: `python -m benchmarks.sequential NAME`.")
    return "\n".join(lines)


def peer_table() -> str:
    data = _load("peer_recbole")
    if data is None:
        return ""
    res = data["results"]
    lines = [
        "| library | s / epoch | s to valid NDCG@10 0.03 | epochs | best valid NDCG@10 | test NDCG@10 | test HR@10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side in res["sides"]:
        lines.append(
            f"| {side['peer']} | {side['seconds_per_epoch']:.1f} | {side['seconds_to_valid_ndcg10_0.03']:.0f} "
            f"| {side['epochs_run']} | {side['best_valid']['ndcg@10']:.4f} | {side['test']['ndcg@10']:.4f} "
            f"| {side['test']['hr@10']:.4f} |"
        )
    lines.append("")
    if "speedup_to_valid_ndcg10_0.03" in res:
        lines.append(f"Speed-up to validation NDCG@10 0.03: **{res['speedup_to_valid_ndcg10_0.03']}x**; "
                     f"per training epoch: {res['speedup_seconds_per_epoch']}x.")
    lines.append(f"`benchmarks/results/peer_recbole.json`, {data['timestamp_utc']}; command: "
                 f"`python {' '.join(data['command'])}`.")
    return "\n".join(lines)


def sharding_table() -> str:
    data = _load("sharding")
    if data is None:
        return ""
    res, mib, gib = data["results"], 1 << 20, 1 << 30
    lines = [
        "| mesh (data x model) | params MiB / device | Adam MiB / device | item table MiB / device "
        "| compiled total MiB / device | step ms (p50) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in res["meshes"]:
        state, memory = row["state_bytes_per_device"], row["compiled_memory_per_device"] or {}
        lines.append(
            f"| {row['mesh']} | {state['params'] / mib:.2f} | {state['opt_state'] / mib:.2f} "
            f"| {state['item_table'] / mib:.2f} | {memory.get('total_bytes', 0) / mib:.2f} "
            f"| {row['step']['p50_s'] * 1e3:.1f} |"
        )
    large = res["large_table"]
    lines += [
        "",
        f"A {large['num_items']:,}-item x {large['width']} table, train step compiled (not run) for "
        f"{res['devices']} devices:",
        "",
        "| mesh | loss | table GiB / device | params + Adam GiB / device | compiled total GiB / device |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in large["rows"]:
        memory = row["compiled_memory_per_device"] or {}
        lines.append(
            f"| {row['mesh']} | {row['loss']} | {row['table_bytes_per_device'] / gib:.3f} "
            f"| {row['state_bytes_per_device'] / gib:.3f} | {memory.get('total_bytes', 0) / gib:.3f} |"
        )
    hw = data["hardware"]
    lines.append("")
    lines.append(f"`benchmarks/results/sharding.json`, {res['devices']} {hw['backend']} devices on "
                 f"{hw['cpu_count']} cores ({hw['cpu_model']}), {data['timestamp_utc']}; command: "
                 f"`python {' '.join(data['command'])}`.")
    return "\n".join(lines)


def multimodal_tables() -> str:
    data = _load("multimodal")
    if data is None:
        return ""
    res, lines = data["results"], []
    fashion = res.get("fashion")
    if fashion:
        attrs = fashion["attributes"]
        names = list(next(iter(attrs.values()))["test"])
        singles = [m for m in ("text", "image") if m in attrs]
        best_single = {a: max(attrs[m]["test"][a] for m in singles) for a in names}
        best_single_mean = max(attrs[m]["test_mean"] for m in singles)
        lines += ["| product encoder | " + " | ".join(names) + " | mean |",
                  "| --- |" + " ---: |" * (len(names) + 1)]
        for mode, r in attrs.items():
            cells = [f"{r['test'][a]:.4f}" for a in names] + [f"**{r['test_mean']:.4f}**"]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        fused = [m for m in attrs if m not in singles]
        if fused and singles:
            best = max(fused, key=lambda m: attrs[m]["test_mean"])
            deltas = [f"{attrs[best]['test'][a] - best_single[a]:+.4f}" for a in names]
            lines.append(f"| {best} - best single modality | " + " | ".join(deltas)
                         + f" | {attrs[best]['test_mean'] - best_single_mean:+.4f} |")
        lines += ["", "| product tower | test NDCG@10 | test recall@10 | valid NDCG@10 | epochs |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for mode, r in fashion["retrieval"].items():
            lines.append(f"| {mode} | {r['test']['ndcg@10']:.4f} | {r['test']['recall@10']:.4f} "
                         f"| {r['valid']['ndcg@10']:.4f} | {r['epochs_run']} |")
        setup = fashion["setup"]
        lines += ["", f"Products train/valid/test {setup['products']['train']}/{setup['products']['valid']}/"
                      f"{setup['products']['test']}; queries {setup['queries']['train']} training wordings, "
                      f"{setup['queries']['valid']} validation, {setup['queries']['test']} test "
                      f"(measured {fashion['measured_utc']})."]
    beauty = res.get("beauty")
    if beauty:
        lines += ["", "| SASRec items | config | test NDCG@10 | test HR@10 | valid NDCG@10 | best epoch | s / epoch |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, label in (("id", "ID embedding"), ("sentence", "ID + MiniLM title"),
                            ("text", "ID + MiniLM title + title words"),
                            ("attributes", "ID + MiniLM title + title words + attributes"),
                            ("id_128", "ID embedding, 128-d"), ("id_128_seed1", "ID embedding, 128-d, seed 1"),
                            ("id_128_seed2", "ID embedding, 128-d, seed 2"),
                            ("text_128", "ID + MiniLM title + title words, 128-d"),
                            ("text_128_seed1", "ID + MiniLM title + title words, 128-d, seed 1"),
                            ("text_128_seed2", "ID + MiniLM title + title words, 128-d, seed 2"),
                            *((f"{kind}_d128{'_seed' + str(seed) if seed else ''}",
                               f"{label}, 128-d configs{', seed ' + str(seed) if seed else ''}")
                              for kind, label in (("id", "ID embedding"), ("text", "ID + MiniLM title + title words"))
                              for seed in (0, 1, 2))):
            if name not in beauty:
                continue
            r = beauty[name]
            lines.append(f"| {label} | `{r['config']}` | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} "
                         f"| {r['valid']['ndcg@10']:.4f} | {r['best_epoch']} | {r['seconds_per_epoch']:.1f} |")
        sentence = beauty.get("relative_ndcg@10_gain_sentence_only")
        attributes = beauty.get("relative_ndcg@10_gain_attributes")
        notes = [f"{100 * gain:+.1f}% {what}" for gain, what in ((sentence, "with the MiniLM vector alone"),
                                                                   (attributes, "with the attributes added"))
                 if gain is not None]
        lines += ["", f"Text vs ID: {100 * beauty['relative_ndcg@10_gain']:+.1f}% test NDCG@10"
                      + (f" ({', '.join(notes)})" if notes else "")
                      + f" (measured {beauty['measured_utc']})."]
        for key, what in (("128d_seed_means", "128-d with the 64-d schedule"),
                          ("d128_seed_means", "The 128-d configs (`configs/sasrec_beauty{,_text}_d128.yaml`)")):
            wide = beauty.get(key)
            if wide:
                best = wide.get("text_vs_best_id_seed_mean_relative_ndcg@10_gain")
                lines += ["", f"{what}, means of seeds 0-2: text {wide['text_test_ndcg@10']:.4f} "
                              f"vs ID {wide['id_test_ndcg@10']:.4f}, {100 * wide['relative_ndcg@10_gain']:+.1f}% test "
                              f"NDCG@10 ({100 * wide['text_vs_64d_id_relative_ndcg@10_gain']:+.1f}% over the 64-d ID "
                              "run, seed 0"
                              + (f"; {100 * best:+.1f}% over the best ID-only seed mean" if best is not None else "")
                              + ")."]
    speed = res.get("throughput_batch64")
    if speed:
        lines += ["", "| encoder, batch 64 | per second |", "| --- | ---: |",
                  f"| MiniLM-L6, Beauty titles (sentences) | {speed['text']['sentences_per_second']:.1f} |",
                  f"| EfficientNet-Lite0, 128 px native (images) | "
                  f"{speed['images_native_128px']['images_per_second']:.1f} |",
                  f"| EfficientNet-Lite0, resized to 224 px (images) | "
                  f"{speed['images_224px']['images_per_second']:.1f} |"]
    hw = data["hardware"]
    lines += ["", f"`benchmarks/results/multimodal.json`, {hw['cpu_count']} cores ({hw['cpu_model']}), "
                  f"{data['timestamp_utc']}; command: `python {' '.join(data['command'])}`."]
    return "\n".join(lines)


def search_tables() -> str:
    data = _load("search")
    if data is None:
        return ""
    res = data["results"]
    lines = ["| model | test RMSE | test NDCG@10 |", "| --- | ---: | ---: |"]
    for row in res["quality"]:
        rmse = f"{row['rmse']:.4f}" if row.get("rmse") is not None else "-"
        ndcg = f"{row['ndcg@10']:.4f}" if row.get("ndcg@10") is not None else "-"
        lines.append(f"| {row['model']} | {rmse} | {ndcg} |")
    lines += ["", "| ef_search | recall@100 vs exact | HNSW p50 ms | HNSW p99 ms |", "| ---: | ---: | ---: | ---: |"]
    for row in res["ann"]:
        lines.append(f"| {row['ef_search']} | {row['recall@100']:.4f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} |")
    if res.get("latency"):
        lines += ["", "| batch | re-ranker | calls | encode | ANN | features | re-rank | total p50 | p95 | p99 "
                      "| first call |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in res["latency"]:
            lines.append(f"| {r['batch']} | {r['reranker']} | {r['calls']} | {r['encode_p50']:.2f} | {r['ann_p50']:.2f} "
                         f"| {r['features_p50']:.2f} | {r['rerank_p50']:.2f} | {r['total_p50']:.2f} "
                         f"| {r['total_p95']:.2f} | {r['total_p99']:.2f} | {r['first_call_ms']:.0f} |")
    hw = data["hardware"]
    lines += ["", f"`benchmarks/results/search.json`, {hw['cpu_count']}-core {hw['cpu_model']}, {data['timestamp_utc']}; "
                  f"catalogue {res['catalogue']} products, {res['test_queries']} test queries."]
    return "\n".join(lines)


def _cell(value, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def ranker_tables() -> str:
    data = _load("ranker")
    if data is None:
        return ""
    res = data["results"]
    lines = ["| model | CTR AUC | GAUC | log loss | calib. | CTCVR AUC | CVR AUC (all) | CVR log loss (all) "
             "| dwell RMSE | NDCG@10 | train s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["synthetic"]:
        lines.append(f"| {r['model']} | {_cell(r['ctr_auc'])} | {_cell(r['ctr_gauc'])} | {_cell(r['ctr_logloss'])} "
                     f"| {_cell(r['ctr_calibration'], '+.3f')} | {_cell(r['ctcvr_auc'])} | {_cell(r['cvr_auc_all'])} "
                     f"| {_cell(r['cvr_logloss_all'])} | {_cell(r['dwell_rmse_log'])} | {_cell(r['ndcg@10_true'])} "
                     f"| {_cell(r['train_seconds'], '.0f')} |")
    lines += ["", "| model | batch | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
    for r in res["latency"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    if res.get("taobao"):
        lines += ["", "| Taobao model | HR@10 | NDCG@10 | train s |", "| --- | ---: | ---: | ---: |"]
        for r in res["taobao"]:
            lines.append(f"| {r['model']} | {_cell(r['hr@10'])} | {_cell(r['ndcg@10'])} | {_cell(r['train_seconds'], '.0f')} |")
    hw = data["hardware"]
    lines += ["", f"`benchmarks/results/ranker.json`, {hw['cpu_count']}-core {hw['cpu_model']}, {data['timestamp_utc']}."]
    return "\n".join(lines)


def serving_table() -> str:
    """docs/serving.md's load-test table (``benchmarks/serving.py``)."""
    data = _load("serving")
    if data is None:
        return ""
    res = data["results"]
    lines = ["| endpoint | clients | requests (malformed) | req/s | p50 ms | p95 ms | p99 ms | 5xx | x in-process "
             "| service CPU ms/req |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in res["levels"].items():
        endpoint, clients = name.split("@")
        ratio = v["throughput_rps"] / res["in_process"][endpoint]["throughput_rps"]
        lines.append(f"| /{endpoint} | {clients} | {v['requests']} ({v['malformed']}) | {v['throughput_rps']:.0f} "
                     f"| {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['p99_ms']:.1f} | {v['server_errors']} | {ratio:.2f} "
                     f"| {_cell(v.get('server_cpu_ms'), '.1f')} |")
    lines += ["", "In-process, one request at a time: " + ", ".join(
        f"/{e} {v['throughput_rps']:.0f} req/s (p50 {v['p50_ms']:.2f} ms)" for e, v in res["in_process"].items()) + "."]
    hw = data["hardware"]
    lines += ["", f"`benchmarks/results/serving.json`, {hw['cpu_count']}-core {hw['cpu_model']}, {data['timestamp_utc']}; "
              f"{res['total_requests']} requests, {res['total_malformed']} malformed, start-up {res['startup_s']} s; "
              f"checks: {', '.join(f'{k} {v}' for k, v in res['checks'].items())}."]
    return "\n".join(lines)


if __name__ == "__main__":
    for table in (peer_table(), sequential_table(), sharding_table(), multimodal_tables(), search_tables(),
                  ranker_tables(), serving_table()):
        print(table)
        print()
