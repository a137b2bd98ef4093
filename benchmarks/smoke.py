"""What ``--quick`` shares across the suites: scratch directories and tiny slices of the real files.

A quick run is a smoke of a suite's whole code path (train, measure, write the JSON the docs'
tables are generated from) at sizes that take seconds, so its numbers mean nothing and must never
land in ``benchmarks/results``: ``require_scratch`` refuses a quick run that would write there. The
slices are the first lines of the real files (no synthetic stand-ins), written under the scratch
runs directory, never next to the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from ecomjax.bench.report import RESULTS_ENV, RUNS_ENV, runs_directory
from ecomjax.data.files import resolve_data_path

# SASRec at smoke size: every override exists in configs/sasrec_beauty.yaml's schema
TINY_SASREC = {"data.max_len": 20, "model.hidden_size": 16, "model.ffn_size": 32, "model.num_layers": 1,
               "model.num_heads": 1, "train.batch_size": 32, "train.epochs": 1,
               "train.warmup_steps": 1, "train.progress": False, "eval.batch_size": 128}
# the satisfaction ranker on a small synthetic world (configs/ranker_synthetic.yaml)
TINY_RANKER = {"data.synthetic.num_users": 300, "data.synthetic.num_items": 200, "data.synthetic.num_categories": 8,
               "data.impressions.num_requests": 600, "model.embed_dim": 8, "model.expert_hidden": [32],
               "model.tower_hidden": [16], "train.epochs": 1, "train.batch_size": 128, "train.progress": False}
# product search without the cross-encoder (configs/search_homedepot.yaml)
TINY_SEARCH = {"cross_encoder.enabled": False, "bi_encoder.train.epochs": 1, "bi_encoder.train.batch_size": 64,
               "bi_encoder.train.progress": False, "gbdt.max_rounds": 30, "serve.hnsw_ef_construction": 40}


def require_scratch(quick: bool) -> None:
    """A quick run writes meaningless numbers: only into scratch directories, never the curated files."""
    if quick and not (os.environ.get(RESULTS_ENV) and os.environ.get(RUNS_ENV)):
        raise SystemExit(f"--quick writes smoke numbers: run it as `python -m benchmarks NAME --quick` (or set "
                         f"{RESULTS_ENV} and {RUNS_ENV} to scratch directories) so benchmarks/results keeps the "
                         "curated files")


def head(relative: str, lines: int, *, keep_header: bool = False) -> Path:
    """The first ``lines`` lines of a real data file (plus its header line with ``keep_header``),
    written once under the scratch runs directory; returns the copy's path."""
    source = resolve_data_path(relative)
    target = runs_directory() / "quick_data" / f"{lines}_{Path(relative).name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open(encoding="utf-8") as f:
            text = [line for _, line in zip(range(lines + keep_header), f, strict=False)]
        target.write_text("".join(text), encoding="utf-8")
    return target


def beauty_overrides(users: int = 400) -> dict[str, object]:
    """SASRec-on-Beauty overrides at smoke size: the first ``users`` users of the real file."""
    return {**TINY_SASREC, "data.source": "file", "data.path": str(head("amazon-beauty/Beauty.txt", users))}


def search_overrides(rows: int = 800) -> dict[str, object]:
    """Home Depot search at smoke size: the first ``rows`` relevance rows of the real file."""
    return {**TINY_SEARCH, "data.path": str(head("homedepot/train.csv", rows, keep_header=True))}


def as_cli(overrides: dict[str, object]) -> list[str]:
    """``key=value`` words for ``ecomjax train`` (lists in YAML flow style)."""
    def text(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return "[" + ",".join(map(str, value)) + "]"
        return str(value)

    return [f"{key}={text(value)}" for key, value in overrides.items()]
