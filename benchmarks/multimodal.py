"""Multimodal ablations: what text, images and their fusion buy on real catalogue data.

Three experiments, written to ``benchmarks/results/multimodal.json`` and printed as tables:

1. **Fashion attributes** (Myntra catalogue, ``$ECOMJAX_DATA_DIR/fashion-products``): article type,
   colour, usage, season and gender predicted from the colour-free title (``text``), the photo
   (``image``) or both (``concat``, ``gated``, ``cross_attention``, ``product``); frozen MiniLM-L6
   token states and EfficientNet-Lite0 feature maps (128 px photos at native size), one trained
   head per mode, product-disjoint split stratified by article type; test accuracy per attribute.
2. **Fashion retrieval**: attribute queries ("navy tee for him") against held-out products, a
   query tower and a product tower per mode, in-batch softmax; test NDCG@10 and recall@10.
3. **Beauty**: SASRec ID-only vs text-fused (item = ID embedding + projected MiniLM title
   embedding (``sentence``), + the mean of learned title-word embeddings (``text``, the shipped
   config), + S3-Rec's brand / category attributes as further learned tokens (``attributes``)),
   full ranking, history excluded, same config otherwise; also ID-only against text at 128
   dimensions over seeds 0-2, with the 64-d schedule (``128d_seed_means``) and with the shipped
   128-d configs ``configs/sasrec_beauty{,_text}_d128.yaml`` (``d128_seed_means``, the headline);
   read from the runs' ``metrics.json``
   (``--beauty-id`` / ``--beauty-sentence`` / ``--beauty-text`` / ``--beauty-attributes`` /
   ``--beauty-run NAME=WORKDIR``), or
   trained here with ``--train-beauty``.

Plus encoder throughput at batch 64 (sentences/s, images/s) measured here, alone.

    python -m benchmarks.multimodal                                  # everything (features cached)
    python -m benchmarks.multimodal --train-beauty                   # also retrain both Beauty runs
    python -m benchmarks.multimodal --modes text image gated --skip-beauty
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.smoke import require_scratch
from ecomjax.bench.report import print_table, results_directory, runs_directory, write_results
from ecomjax.models.fusion import FUSION_MODES

ROOT = Path(__file__).resolve().parent.parent

# name -> (config, overrides, default workdir under runs/): ID-only; ID + projected MiniLM title
# vector; the shipped text config (that + learned title-word embeddings); that + S3-Rec's item
# attributes (brand, categories) as further learned tokens; ID-only and text at 128 dimensions
# (ffn 512) with the 64-d schedule, three seeds each; the same with the shipped 128-d configs
# (12-epoch schedule), three seeds each
WIDE = ["model.hidden_size=128", "model.ffn_size=512"]
BEAUTY_RUNS = {"id": ("configs/sasrec_beauty.yaml", [], "sasrec_beauty"),
               "sentence": ("configs/sasrec_beauty_text.yaml", ["model.title_word_min_items=0"],
                            "sasrec_beauty_text_sentence"),
               "text": ("configs/sasrec_beauty_text.yaml", [], "sasrec_beauty_text"),
               "attributes": ("configs/sasrec_beauty_text.yaml",
                              ["model.item_attributes=amazon-beauty/Beauty_item2attributes.json"],
                              "sasrec_beauty_text_attr"),
               "id_128": ("configs/sasrec_beauty.yaml", WIDE, "beauty_id_h128"),
               "id_128_seed1": ("configs/sasrec_beauty.yaml", [*WIDE, "seed=1"], "beauty_id_h128_s1"),
               "text_128": ("configs/sasrec_beauty_text.yaml", WIDE, "beauty_text_h128"),
               "text_128_seed1": ("configs/sasrec_beauty_text.yaml", [*WIDE, "seed=1"], "beauty_text_h128_s1"),
               "id_128_seed2": ("configs/sasrec_beauty.yaml", [*WIDE, "seed=2"], "beauty_id_h128_s2"),
               "text_128_seed2": ("configs/sasrec_beauty_text.yaml", [*WIDE, "seed=2"], "beauty_text_h128_s2"),
               **{f"{kind}_d128{'_seed' + str(seed) if seed else ''}":
                  (f"configs/sasrec_beauty{infix}_d128.yaml", [f"seed={seed}"] if seed else [],
                   f"beauty_{kind}_h128_e12{'_s' + str(seed) if seed else ''}")
                  for kind, infix in (("id", ""), ("text", "_text")) for seed in (0, 1, 2)}}
# Text vs ID over seeds 0-2: key in the JSON -> the two name prefixes in BEAUTY_RUNS. "d128_seed_means" is
# the shipped 128-d pair (configs/sasrec_beauty{,_text}_d128.yaml: 12-epoch schedule), the headline.
SEED_MEANS = {"128d_seed_means": ("id_128", "text_128"), "d128_seed_means": ("id_d128", "text_d128")}


QUICK_FASHION = ["data.max_products=1000", "data.min_count=10", "train.epochs=1", "train.batch_size=64",
                 "data.train_queries=300", "data.paraphrases=1", "data.eval_queries=60"]


def fashion_experiments(modes: list[str], overrides: dict) -> dict:
    """Each mode through the shipped configs (``configs/fashion_attributes.yaml``,
    ``configs/fashion_retrieval.yaml``) and the one loop, the features computed once (cached)."""
    import ecomjax
    from ecomjax.data.fashion import ATTRIBUTE_FIELDS

    attributes, retrieval, setup = {}, {}, {}
    for mode in modes:
        common = {"model.fusion": mode, "train.progress": False, **overrides}
        run = ecomjax.train(ROOT / "configs/fashion_attributes.yaml",
                            overrides={**common, "workdir": str(runs_directory() / "fashion" / f"attributes_{mode}")})
        m = run.metrics
        attributes[mode] = {"test": {a: m["test"][a] for a in ATTRIBUTE_FIELDS}, "test_mean": m["test"]["mean_accuracy"],
                            "valid_mean": m["valid"]["mean_accuracy"], "best_epoch": m["best_epoch"],
                            "epochs_run": m["epochs_run"], "seconds": round(m["train_seconds"], 1),
                            "params": m["num_params"]}
        print(f"attributes {mode}: test mean {m['test']['mean_accuracy']:.4f}", flush=True)
        run = ecomjax.train(ROOT / "configs/fashion_retrieval.yaml",
                            overrides={**common, "workdir": str(runs_directory() / "fashion" / f"retrieval_{mode}")})
        m = run.metrics
        retrieval[mode] = {split: {k: m[split][k] for k in ("ndcg@10", "recall@10")} for split in ("valid", "test")}
        retrieval[mode].update({"best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                                "seconds": round(m["train_seconds"], 1), "params": m["num_params"]})
        setup = m["setup"]
        print(f"retrieval {mode}: test {retrieval[mode]['test']}", flush=True)
    return {"setup": setup, "attributes": attributes, "retrieval": retrieval,
            "commands": [f"ecomjax train configs/fashion_{task}.yaml model.fusion=MODE"
                         for task in ("attributes", "retrieval")]}


def beauty(paths: dict[str, Path], train: bool, previous: dict) -> dict:
    """Each run's ``metrics.json`` (trained here with ``train``). A run whose workdir is not on
    this machine keeps the entry an earlier benchmark run recorded for the same config (its
    ``measured_utc`` says when); one never recorded is an error naming the command to run."""
    out = {}
    for name, (config, overrides, default) in BEAUTY_RUNS.items():
        workdir = paths.get(name, runs_directory() / default)
        command = [sys.executable, "-m", "ecomjax", "train", config, *overrides, f"workdir={workdir}",
                   "train.progress=false"]
        if train:
            subprocess.run(command, check=True, cwd=ROOT)
        metrics_path = workdir / "metrics.json"
        recorded = previous.get(name, {})
        if not metrics_path.is_file():
            if recorded.get("config") == " ".join([config, *overrides]):
                print(f"beauty {name}: {metrics_path} not here; keeping the recorded result "
                      f"({recorded.get('measured_utc', previous.get('measured_utc'))})")
                out[name] = {**recorded, "measured_utc": recorded.get("measured_utc", previous.get("measured_utc"))}
                continue
            raise FileNotFoundError(f"{metrics_path} not found: run `{' '.join(command[1:])}` or pass "
                                    "--train-beauty")
        metrics = json.loads(metrics_path.read_text())
        out[name] = {"config": " ".join([config, *overrides]), "workdir": str(workdir), "test": metrics["test"],
                     "valid": metrics["valid"], "best_epoch": metrics["best_epoch"],
                     "epochs_run": metrics["epochs_run"], "train_seconds": metrics["train_seconds"],
                     "seconds_per_epoch": metrics["seconds_per_epoch"], "num_params": metrics["num_params"],
                     "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(metrics_path.stat().st_mtime))}
    gain = out["text"]["test"]["ndcg@10"] / out["id"]["test"]["ndcg@10"] - 1
    out["relative_ndcg@10_gain"] = gain
    out["relative_ndcg@10_gain_sentence_only"] = out["sentence"]["test"]["ndcg@10"] / out["id"]["test"]["ndcg@10"] - 1
    out["relative_ndcg@10_gain_attributes"] = out["attributes"]["test"]["ndcg@10"] / out["id"]["test"]["ndcg@10"] - 1
    for key, (id_only, text) in SEED_MEANS.items():
        means = {kind: float(np.mean([out[n]["test"]["ndcg@10"] for n in (prefix, f"{prefix}_seed1", f"{prefix}_seed2")]))
                 for kind, prefix in (("id", id_only), ("text", text))}
        out[key] = {**{f"{kind}_test_ndcg@10": v for kind, v in means.items()},
                    "relative_ndcg@10_gain": means["text"] / means["id"] - 1,
                    "text_vs_64d_id_relative_ndcg@10_gain": means["text"] / out["id"]["test"]["ndcg@10"] - 1}
    # the shipped 128-d text model against the best ID-only seed mean above (either schedule)
    best_id = max(out[key]["id_test_ndcg@10"] for key in SEED_MEANS)
    out["d128_seed_means"]["text_vs_best_id_seed_mean_relative_ndcg@10_gain"] = (
        out["d128_seed_means"]["text_test_ndcg@10"] / best_id - 1)
    return out


def throughput(batch_size: int = 64, titles: int = 1024, iters: int = 5) -> dict:
    """Sentences/s and images/s at ``batch_size``, end to end from host data to host features."""
    from benchmarks.text_encoder_throughput import beauty_titles
    from benchmarks.text_encoder_throughput import throughput as text_throughput
    from ecomjax.bench.timing import time_callable
    from ecomjax.encoders import ImageEncoder, TextEncoder

    text = text_throughput(TextEncoder.from_pretrained(), beauty_titles(titles), batch_size, min(iters, 3))
    encoder = ImageEncoder()
    photos = np.random.default_rng(0).integers(0, 256, (batch_size, 128, 128, 3), dtype=np.uint8)
    images = {}
    for name, call in (("images_native_128px", lambda: encoder.feature_maps(photos, batch_size, 128)),
                       ("images_224px", lambda: encoder.encode(photos, batch_size))):
        timing = time_callable(call, warmup=1, iters=iters)
        images[name] = {"images_per_second": timing.throughput(batch_size), "p50_batch_seconds": timing.p50,
                        "first_call_seconds": timing.first_call_seconds, "input": "128x128 uint8 photos",
                        "network_resolution": 128 if "128" in name else 224}
    return {"text": text, **images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(FUSION_MODES), choices=FUSION_MODES)
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--skip-beauty", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--train-beauty", action="store_true", help="retrain both Beauty configs here")
    for name in ("id", "text", "sentence", "attributes"):  # shorthands for --beauty-run NAME=WORKDIR
        parser.add_argument(f"--beauty-{name}", type=Path, help=f"workdir of the {name!r} run")
    parser.add_argument("--beauty-run", action="append", default=[], metavar="NAME=WORKDIR",
                        help=f"workdir of any Beauty run ({', '.join(BEAUTY_RUNS)}); defaults under runs/ in BEAUTY_RUNS")
    parser.add_argument("--fashion-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for both fashion configs, e.g. data.train_queries=2000")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: concat fusion on 1,000 Fashion products for one epoch, throughput on 64 "
                             "titles and one timed batch; Beauty skipped")
    args = parser.parse_args(argv)
    require_scratch(args.quick)
    if args.quick:
        args.modes, args.skip_beauty = ["concat"], True
        args.fashion_set = [*QUICK_FASHION, *args.fashion_set]

    # Sections not rerun keep their previous values (each carries its own measured_utc).
    previous = results_directory() / "multimodal.json"
    results: dict = json.loads(previous.read_text())["results"] if previous.is_file() else {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.skip_throughput:  # first, while nothing else of ours runs
        sizes = {"titles": 64, "iters": 1} if args.quick else {}
        results["throughput_batch64"] = {**throughput(**sizes), "measured_utc": stamp}
    if not args.skip_fashion:
        from ecomjax.config import parse_override

        overrides = dict(parse_override(o) for o in args.fashion_set)
        results["fashion"] = {**fashion_experiments(args.modes, overrides), "measured_utc": stamp}
    if not args.skip_beauty:
        paths = {name: getattr(args, f"beauty_{name}") for name in ("id", "text", "sentence", "attributes")
                 if getattr(args, f"beauty_{name}") is not None}
        for item in args.beauty_run:
            name, _, workdir = item.partition("=")
            if name not in BEAUTY_RUNS or not workdir:
                parser.error(f"--beauty-run {item!r}: expected NAME=WORKDIR with NAME one of {list(BEAUTY_RUNS)}")
            paths[name] = Path(workdir)
        results["beauty"] = {**beauty(paths, args.train_beauty, results.get("beauty", {})),
                             "measured_utc": stamp}

    if "fashion" in results:
        fashion = results["fashion"]
        attrs = fashion["attributes"]
        singles = [m for m in ("text", "image") if m in attrs]  # --modes may leave both out
        best_single = {a: max(attrs[m]["test"][a] for m in singles)
                       for a in next(iter(attrs.values()))["test"]} if singles else {}
        rows = []
        for mode, r in attrs.items():
            row = {"mode": mode, **{a: r["test"][a] for a in r["test"]}, "mean": r["test_mean"]}
            rows.append(row)
        if best_single:
            rows.append({"mode": "best single", **best_single,
                         "mean": max(attrs[m]["test_mean"] for m in singles)})
        print_table(rows, list(rows[0]), title="Fashion attribute accuracy, held-out products (test)")
        rows = [{"mode": m, "ndcg@10": r["test"]["ndcg@10"], "recall@10": r["test"]["recall@10"],
                 "valid ndcg@10": r["valid"]["ndcg@10"], "epochs": r["epochs_run"], "s": r["seconds"]}
                for m, r in fashion["retrieval"].items()]
        print_table(rows, list(rows[0]), title="Fashion attribute-query retrieval, held-out products and queries")
    if "beauty" in results:
        b = results["beauty"]
        rows = [{"items": name, "test ndcg@10": b[name]["test"]["ndcg@10"], "test hr@10": b[name]["test"]["hr@10"],
                 "valid ndcg@10": b[name]["valid"]["ndcg@10"], "s/epoch": b[name]["seconds_per_epoch"]}
                for name in BEAUTY_RUNS]
        gains = ", ".join(f"{100 * b[key]['relative_ndcg@10_gain']:+.1f}% {label}"
                          for key, label in (("128d_seed_means", "at 128-d, 64-d schedule"),
                                             ("d128_seed_means", "with the 128-d configs")) if key in b)
        print_table(rows, list(rows[0]), title=f"Beauty SASRec, full ranking (text vs ID: "
                                                f"{100 * b['relative_ndcg@10_gain']:+.1f}% NDCG@10 at 64-d, seed 0; "
                                                f"{gains}, on the means of seeds 0-2)")
    if "throughput_batch64" in results:
        t = results["throughput_batch64"]
        print_table([{"encoder": "MiniLM-L6 (Beauty titles)", "per second": t["text"]["sentences_per_second"]},
                     {"encoder": "EfficientNet-Lite0 128 px", "per second": t["images_native_128px"]["images_per_second"]},
                     {"encoder": "EfficientNet-Lite0 224 px", "per second": t["images_224px"]["images_per_second"]}],
                    ["encoder", "per second"], title="Encoder throughput, batch 64")
    results.pop("numpy", None)
    path = write_results("multimodal", results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
