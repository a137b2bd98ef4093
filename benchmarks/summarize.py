"""The results tables of the docs, generated from ``benchmarks/results/*.json`` (so the docs quote files).

    python -m benchmarks.summarize            # print every table
    python -m benchmarks.summarize --write    # rewrite the generated blocks of README.md and docs/results/
    python -m benchmarks.summarize --check    # exit 1 naming the blocks that differ from the JSON

A page holds hand-written text (what a number means, how it was reached) and generated blocks
between ``<!-- summarize:NAME -->`` and ``<!-- /summarize:NAME -->``; ``--write`` replaces each
block's body with ``TABLES[NAME]()``. The tests run ``--check``, so a committed JSON and the
tables quoting it cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# benchmarks/results/NAME.json, or a smoke's file when $ECOMJAX_BENCH_RESULTS is set
from ecomjax.bench.report import read_results as _load

ROOT = Path(__file__).resolve().parent.parent


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
        reached = side["seconds_to_valid_ndcg10_0.03"]  # None: never reached within its epochs
        lines.append(
            f"| {side['peer']} | {side['seconds_per_epoch']:.1f} | {'not reached' if reached is None else f'{reached:.0f}'} "
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
        best_single = {a: max(attrs[m]["test"][a] for m in singles) for a in names} if singles else {}
        best_single_mean = max(attrs[m]["test_mean"] for m in singles) if singles else None
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


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def efficiency_tables() -> str:
    data = _load("efficiency")
    if data is None:
        return ""
    res, lines = data["results"], []
    sasrec = res.get("sasrec_beauty")
    if sasrec:
        lines += ["| SASRec variant | NDCG@10 | change | bytes | p50 ms, batch 32 | speed-up, 32 | encoder speed-up, 32 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for v in sasrec["variants"]:
            lines.append(f"| {v['variant']} | {v['ndcg@10']:.4f} | {_pct(v['ndcg_change'])} | {v['bytes_ratio']:.2f} "
                         f"| {v['p50_ms_b32']:.2f} | {v['speedup_b32']:.2f} | {v['encode_speedup_b32']:.2f} |")
        lines += ["", "| run (test NDCG@10) | seed 0 | seed 1 | seed 2 | mean | change |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in sasrec["seeds"]:
            cells = " | ".join(f"{x:.4f}" for x in r["test_ndcg@10"])
            lines.append(f"| `{r['run']}` | {cells} | {r['mean']:.4f} | {_pct(r['mean_change'])} |")
        lines += ["", f"SASRec section measured {sasrec.get('measured_utc', data['timestamp_utc'])} "
                      f"(`{sasrec['protocol']['config']}`, "
                      f"{sasrec['protocol']['ranking']}; latency: {sasrec['protocol']['latency']})."]
    cross = res.get("homedepot_cross_encoder")
    if cross:
        lines += ["", "| cross-encoder variant | NDCG@10 | RMSE | gain kept (NDCG / RMSE) | trainable | bytes "
                      "| p50 ms, batch 32 | speed-up |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for v in cross["variants"]:
            kept = (f"{v['gain_recovered_ndcg']:.2f} / {v['gain_recovered_rmse']:.2f}"
                    if "gain_recovered_ndcg" in v else "-")
            trainable = f"{100 * v['trainable_fraction']:.2f}%" if v.get("trainable_fraction") is not None else "-"
            lines.append(f"| {v['variant']} | {v['ndcg@10']:.4f} | {v['rmse']:.4f} | {kept} | {trainable} "
                         f"| {v['bytes_ratio']:.2f} | {v['p50_ms_b32']:.1f} | {v['speedup_b32']:.2f} |")
        seeds = cross["setup"].get("gain_over_seeds")
        if seeds:
            lines += ["", "| metric | frozen encoder + head | full fine-tuning, seeds " + " / ".join(map(str, seeds["seeds"]))
                      + " | LoRA, seeds " + " / ".join(map(str, seeds["seeds"])) + " | gain kept | 95% interval |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for metric in ("ndcg@10", "rmse"):
                g = seeds[metric]
                lines.append(f"| {metric} | {g['frozen_encoder_head']:.4f} | "
                             + " / ".join(f"{x:.4f}" for x in g["full_per_seed"]) + " | "
                             + " / ".join(f"{x:.4f}" for x in g["lora_per_seed"])
                             + f" | **{g['gain_kept']:.3f}** | {g['ci95'][0]:.3f} - {g['ci95'][1]:.3f} |")
    hw = data["hardware"]
    lines += ["", f"`benchmarks/results/efficiency.json`, {hw['cpu_count']}-core {hw['cpu_model']}, "
                  f"{data['timestamp_utc']}; command: `python {' '.join(data['command'])}` (the SASRec section: "
                  "`python -m benchmarks.efficiency --skip-search`)."]
    return "\n".join(lines)


def tuning_table() -> str:
    data = _load("tuning")
    if data is None:
        return ""
    res = data["results"]
    lines = ["| study | budget | trials (complete / pruned / cut) | best valid | its test | shipped config: valid / test |",
             "| --- | --- | --- | ---: | ---: | ---: |"]

    def row(name, budget, study, test_key, fmt=".4f"):
        c, best, base = study["counts"], study["best"], study["baseline"]
        shipped = f"{base['valid']:{fmt}} / {base['test'][test_key]:{fmt}}" if base else "not in the study"
        lines.append(f"| {name} | {budget:g} min | {sum(c.values())} ({c['COMPLETE']} / {c['PRUNED']} / "
                     f"{c['INTERRUPTED']}) | {best['valid']:{fmt}} (trial {best['trial']}) "
                     f"| {best['test'][test_key]:{fmt}} | {shipped} |")

    if "sasrec" in res:
        for key, label in (("median_pruner", "median pruner"), ("no_pruning", "no pruning")):
            row(f"SASRec Beauty, {label} (NDCG@10)", res["sasrec"]["budget_minutes"], res["sasrec"]["studies"][key],
                "ndcg@10")
    if "ranker" in res:
        row("ranker, synthetic (valid loss; test CTR AUC gap to Bayes)", res["ranker"]["budget_minutes"],
            res["ranker"]["study"], "ctr_auc_gap_to_bayes")
    if "search_gbdt" in res:
        row("search GBDT re-ranker (RMSE)", res["search_gbdt"]["budget_minutes"], res["search_gbdt"]["study"],
            "gbdt_fast_rmse")
    lines += ["", f"`benchmarks/results/tuning.json`, {data['timestamp_utc']}; command: "
                  "`python -m benchmarks.tuning sasrec|ranker|search_gbdt`."]
    return "\n".join(lines)


def data_scale_table() -> str:
    data = _load("data_scale")
    if data is None:
        return ""
    lines = ["| log | prepare rows/s | prepare peak RSS | stream rows/s | stream peak RSS | in-memory peak RSS |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["results"]["rows"]:
        memory = f"{r['in_memory_peak_mb']:,.0f} MB" if r.get("in_memory_peak_mb") else "-"
        lines.append(f"| {r['interactions'] // 1_000_000}M | {r['prepare_rows_per_s']:,} | {r['prepare_peak_mb']:,.0f} MB "
                     f"| {r['stream_rows_per_s']:,} | {r['stream_peak_mb']:,.0f} MB | {memory} |")
    lines += ["", f"`benchmarks/results/data_scale.json`, {data['hardware']['cpu_count']}-core "
                  f"{data['hardware']['cpu_model']}, {data['timestamp_utc']}; command: `python {' '.join(data['command'])}`."]
    return "\n".join(lines)


def _best(rows, key):
    return max(rows, key=lambda r: r[key])


def _headline_seq() -> str | None:
    seq = _load("sequential")
    peer = _load("peer_recbole")
    if seq and peer:
        runs = seq["results"]["runs"]
        beauty, ml1m = runs.get("sasrec_beauty"), runs.get("sasrec_ml1m")
        return (f"| sequential recommendation | SASRec Beauty NDCG@10 {beauty['test']['ndcg@10']:.4f} "
                f"(published {beauty['published']['ndcg@10']}), ML-1M {ml1m['test']['ndcg@10']:.4f} "
                f"(published {ml1m['published']['ndcg@10']}); "
                f"{peer['results']['speedup_to_valid_ndcg10_0.03']}x faster than RecBole to valid NDCG@10 0.03 "
                "| [recommendation](docs/results/recommendation.md) |")
    return None


def _headline_mm() -> str | None:
    mm = _load("multimodal")
    if mm:
        res = mm["results"]
        d128 = res["beauty"]["d128_seed_means"]
        attrs = res["fashion"]["attributes"]
        return (f"| multimodal fusion | titles in SASRec Beauty {d128['text_test_ndcg@10']:.4f} vs ID "
                f"{d128['id_test_ndcg@10']:.4f} ({_pct(d128['relative_ndcg@10_gain'])}); fashion attributes "
                f"title + photo {attrs['product']['test_mean']:.4f} vs title {attrs['text']['test_mean']:.4f} "
                "| [multimodal](docs/results/multimodal.md) |")
    return None


def _headline_search() -> str | None:
    search = _load("search")
    if search:
        quality = {r["model"]: r for r in search["results"]["quality"]}
        fast = next(r for r in search["results"]["latency"] if r["batch"] == 1 and r["reranker"] == "gbdt_fast")
        best = min((r for r in quality.values() if r.get("rmse") is not None), key=lambda r: r["rmse"])
        return (f"| product search (Home Depot) | RMSE {best['rmse']:.4f} ({best['model']}); fast pipeline p99 "
                f"{fast['total_p99']:.1f} ms a query | [search](docs/results/search.md) |")
    return None


def _headline_ranker() -> str | None:
    ranker = _load("ranker")
    if ranker:
        syn = {r["model"]: r for r in ranker["results"]["synthetic"]}
        shipped, bayes = syn["dcnv2_mmoe_esmm"], syn["bayes_optimal (true p)"]
        taobao = _best(ranker["results"]["taobao"], "hr@10")
        return (f"| satisfaction ranker | CTR AUC {shipped['ctr_auc']:.4f} (Bayes ceiling {bayes['ctr_auc']:.4f}), "
                f"ESMM CVR AUC {shipped['cvr_auc_all']:.4f} vs clicked-only {syn['cvr_clicked_only']['cvr_auc_all']:.4f}; "
                f"Taobao cart + buy HR@10 {taobao['hr@10']:.4f} | [ranker](docs/results/ranker.md) |")
    return None


def _headline_eff() -> str | None:
    eff = _load("efficiency")
    if eff:
        variants = {v["variant"]: v for v in eff["results"]["sasrec_beauty"]["variants"]}
        lora = eff["results"]["homedepot_cross_encoder"]["setup"]["gain_over_seeds"]["ndcg@10"]["gain_kept"]
        int8 = variants["int8 (w8a8)"]
        return (f"| efficiency | int8 SASRec {_pct(int8['ndcg_change'])} NDCG@10 at {int8['bytes_ratio']:.2f}x "
                f"the bytes; LoRA keeps {100 * lora:.0f}% of full fine-tuning's gain | "
                "[efficiency](docs/results/efficiency.md) |")
    return None


def _headline_shard() -> str | None:
    shard = _load("sharding")
    if shard:
        large = {r["mesh"] + r["loss"]: r for r in shard["results"]["large_table"]["rows"]}
        gib = 1 << 30
        return (f"| scaling | a {shard['results']['large_table']['num_items']:,}-item table: "
                f"{large['8x1full_softmax']['table_bytes_per_device'] / gib:.2f} -> "
                f"{large['1x8full_softmax']['table_bytes_per_device'] / gib:.2f} GiB per device (8x1 -> 1x8 mesh) "
                "| [scaling](docs/results/scaling.md) |")
    return None


def _headline_tuning() -> str | None:
    tuning = _load("tuning")
    if tuning:
        s = tuning["results"]["sasrec"]["studies"]["median_pruner"]
        return (f"| tuning | SASRec Beauty 60 min: {sum(s['counts'].values())} trials pruned vs "
                f"{sum(tuning['results']['sasrec']['studies']['no_pruning']['counts'].values())} unpruned; best "
                f"test NDCG@10 {s['best']['test']['ndcg@10']:.4f} (the shipped config) | [tuning](docs/results/tuning.md) |")
    return None


def _headline_serving() -> str | None:
    serving = _load("serving")
    if serving:
        levels = serving["results"]["levels"]
        return (f"| serving | /recommend x32 p99 {levels['recommend@32']['p99_ms']:.1f} ms; /search x8 p99 "
                f"{levels['search@8']['p99_ms']:.1f} ms; {serving['results']['total_requests']:,} requests, 0 5xx "
                "| [serving](docs/results/serving.md) |")
    return None


def _headline_data_scale() -> str | None:
    data_scale = _load("data_scale")
    if data_scale:
        big = data_scale["results"]["rows"][-1]
        return (f"| data preparation | {big['interactions'] // 1_000_000}M-row log prepared out of core at "
                f"{big['prepare_peak_mb']:,.0f} MB peak | [data](docs/results/data.md) |")
    return None


_HEADLINES = (_headline_seq, _headline_mm, _headline_search, _headline_ranker, _headline_eff, _headline_shard, _headline_tuning, _headline_serving, _headline_data_scale)


def readme_table() -> str:
    """One row per capability, its headline numbers and the page that explains them. A capability
    whose headline is not in its JSON (a partial run: some suites, ``--quick``) gets no row."""
    rows = ["| capability | headline (test split) | details |", "| --- | --- | --- |"]
    for headline in _HEADLINES:
        try:
            row = headline()
        except (KeyError, TypeError, StopIteration, ValueError):
            continue
        if row:
            rows.append(row)
    return "\n".join(rows)


TABLES = {
    "readme": readme_table, "peer": peer_table, "sequential": sequential_table, "sharding": sharding_table,
    "multimodal": multimodal_tables, "search": search_tables, "ranker": ranker_tables, "efficiency": efficiency_tables,
    "tuning": tuning_table, "serving": serving_table, "data_scale": data_scale_table,
}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "results").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- summarize:(\w+) -->\n)(.*?)(<!-- /summarize:\2 -->)", re.S)


def render(text: str, where: Path) -> str:
    """``text`` with every generated block's body replaced by its table; an unknown name is an error."""
    def body(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise SystemExit(f"{where}: <!-- summarize:{name} --> names no table; tables: {sorted(TABLES)}")
        return f"{match.group(1)}{TABLES[name]()}\n{match.group(4)}"

    return _BLOCK.sub(body, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated block differs from the JSON")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name, table in TABLES.items():
            print(f"## {name}\n\n{table()}\n")
        return 0
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = render(text, page)
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if args.write:
                page.write_text(new)
    if args.check and stale:
        print(f"generated tables out of date in {', '.join(stale)}: run python -m benchmarks.summarize --write",
              file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "every generated table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
