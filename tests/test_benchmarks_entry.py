"""``python -m benchmarks``: every suite registered, the quick smoke end to end, the curated files untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_data

from benchmarks.__main__ import SUITES, main

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.iterdir())}


def test_every_suite_that_writes_results_is_registered():
    """A new benchmark module that writes a results file must be reachable from the entry point."""
    writers = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if "write_results(" in p.read_text()}
    assert writers == {suite.module for suite in SUITES.values()}


def test_unknown_suite_and_misplaced_out_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["rankr"])
    assert "unknown suite(s) ['rankr']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ranker", "--out", "x"])
    assert "--out is for --quick" in capsys.readouterr().err


def test_list_names_every_suite(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, suite in SUITES.items():
        assert name in out and f"benchmarks.{suite.module}" in out


def test_a_quick_suite_alone_refuses_to_write_the_curated_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOMJAX_BENCH_")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.data_scale", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--quick writes smoke numbers" in done.stderr and "ECOMJAX_BENCH_RESULTS" in done.stderr


def test_quick_smoke_of_every_suite_writes_results_the_docs_render(tmp_path):
    """Every suite's code path at tiny sizes on slices of the real files, each writing its JSON
    (with provenance) into the scratch directory; every docs table renders from them; the curated
    results are byte for byte what they were."""
    real_data("amazon-beauty/Beauty.txt")  # fails (not skips) under CI when the data is missing
    before = _digests()
    done = subprocess.run([sys.executable, "-m", "benchmarks", "all", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    written = {p.stem for p in (tmp_path / "results").glob("*.json")}
    assert written == {suite.module for suite in SUITES.values()}
    for name in written:
        document = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert document["results"] and document["hardware"]["cpu_count"] > 0
        assert document["command"][:2] == ["-m", f"benchmarks.{name}"] and "--quick" in document["command"]
    assert _digests() == before
    assert not (ROOT / "runs" / "quick_data").exists()
