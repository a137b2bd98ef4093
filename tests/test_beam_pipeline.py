"""The Apache Beam engine of ``ecomjax data prepare`` (DirectRunner) against the local engine.

Beam pins older numpy / pyarrow / protobuf than this project, so it is not in the test extra:
this file runs where the ``beam`` extra is installed and is skipped elsewhere.
``benchmarks/data_scale.py --beam`` builds such an environment under ``.peers/beam``; run it there
with ``PYTHONPATH=. .peers/beam/bin/python -m pytest tests/test_beam_pipeline.py -o addopts=""``.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecomjax.data.log_readers import ColumnMap
from ecomjax.data.preprocess import PreprocessConfig
from ecomjax.data.shards import prepare_shards

beam = pytest.importorskip("apache_beam")


def _log(path, n=30000, seed=0):
    rng = np.random.default_rng(seed)
    users, items, times = rng.integers(0, 600, n), rng.zipf(1.3, n) % 700, rng.integers(0, 400, n)
    items[1::5] = items[0:-1:5][: len(items[1::5])]
    path.write_text("user;item;time\n" + "".join(f"u{u};{i};{t}\n" for u, i, t in zip(users, items, times,
                                                                                       strict=True)))
    return path


@pytest.mark.parametrize("steps", [PreprocessConfig(),
                                   PreprocessConfig(drop_duplicates=True, drop_consecutive_repeats=True,
                                                    min_user_interactions=5, min_item_interactions=5)])
def test_beam_direct_runner_writes_the_local_shards(tmp_path, steps):
    from ecomjax.data.beam_pipeline import prepare_shards_beam

    log = _log(tmp_path / "log.csv")
    columns = ColumnMap("user", "item", "time")
    local = prepare_shards(log, tmp_path / "local", columns, steps, delimiter=";", num_buckets=3)
    # byte ranges far smaller than the file: lines cut at range edges must be read exactly once
    piped = prepare_shards_beam(log, tmp_path / "beam", columns, steps, delimiter=";", num_buckets=3,
                                range_bytes=40_000)
    assert piped["steps"] == local["steps"] and piped["final"] == local["final"]
    for b in range(3):
        name = f"shard-{b:05d}.parquet"
        assert pq.read_table(tmp_path / "beam" / name).equals(pq.read_table(tmp_path / "local" / name)), name
    assert np.array_equal(np.load(tmp_path / "beam" / "item_ids.npy"), np.load(tmp_path / "local" / "item_ids.npy"))
