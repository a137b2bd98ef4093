"""ecomjax.bench: timing, FLOPs/MFU, memory, money cost and result files (tiny shapes, fast)."""

from __future__ import annotations

import datetime as dt
import importlib.machinery
import io
import json
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomjax import bench
from ecomjax.bench import flops as flops_mod
from ecomjax.bench.report import command_line

# ---------------------------------------------------------------------------------------------
# timing


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    samples = rng.exponential(1e-3, size=257)
    got = bench.percentiles(samples)
    assert set(got) == {50.0, 95.0, 99.0}
    for q, value in got.items():
        assert value == pytest.approx(np.percentile(samples, q), rel=1e-12)
    custom = bench.percentiles(samples, qs=(0, 10, 100))
    assert custom[0.0] == samples.min()
    assert custom[100.0] == samples.max()
    assert custom[10.0] == pytest.approx(np.percentile(samples, 10))


def test_percentiles_reject_bad_input():
    with pytest.raises(ValueError):
        bench.percentiles([])
    with pytest.raises(ValueError):
        bench.percentiles([1.0, 2.0], qs=(101,))


def test_timing_summary_statistics():
    samples = [0.004, 0.001, 0.002, 0.003, 0.010]
    t = bench.Timing.from_samples(samples, warmup=2, compile_seconds=0.5)
    arr = np.asarray(samples)
    assert t.iters == 5 and t.warmup == 2 and t.compile_seconds == 0.5
    assert t.p50 == pytest.approx(0.003)
    assert t.p95 == pytest.approx(np.percentile(arr, 95))
    assert t.p99 == pytest.approx(np.percentile(arr, 99))
    assert t.mean == pytest.approx(arr.mean())
    assert t.std == pytest.approx(arr.std(ddof=1))
    assert (t.min, t.max) == (0.001, 0.010)
    assert t.throughput(300) == pytest.approx(300 / 0.003)
    summary = t.to_dict()
    assert summary["p50_s"] == t.p50 and summary["compile_s"] == 0.5
    assert "samples_s" not in summary
    assert t.to_dict(include_samples=True)["samples_s"] == samples


def test_time_jitted_keeps_compile_apart_and_compiles_once():
    traces = []

    def many_ops(x):  # long to compile (unrolled), microseconds to run on an 8x8 array
        traces.append(1)
        for i in range(100):
            x = jnp.sin(x) * 1.0001 + jnp.cos(x * (i + 1))
        return x

    t = bench.time_jitted(many_ops, jnp.ones((8, 8)), warmup=2, iters=10)
    assert len(traces) == 1  # traced and compiled once, before any timed call
    assert t.iters == 10 and t.seconds.shape == (10,)
    assert t.compile_seconds is not None and t.compile_seconds > 0
    assert t.first_call_seconds is not None
    # The first timed call is a steady-state call, not a compile: far below the compile time.
    assert t.seconds[0] < t.compile_seconds / 5
    assert t.p50 < t.compile_seconds / 5
    assert t.compiled is not None


def test_time_jitted_accepts_jitted_and_static_args():
    def scale(x, n):
        return x * n

    x = np.arange(4, dtype=np.float32)
    t = bench.time_jitted(jax.jit(scale, static_argnums=1), x, 3, static_argnums=(1,), iters=3)
    assert t.iters == 3
    np.testing.assert_allclose(t.compiled(jnp.asarray(x)), x * 3)
    t2 = bench.time_jitted(scale, x, 2, static_argnums=(1,), warmup=0, iters=2)
    assert t2.iters == 2 and t2.first_call_seconds is None


def test_time_jitted_min_seconds_extends_the_loop():
    t = bench.time_jitted(lambda x: x + 1, jnp.ones(4), warmup=1, iters=2, min_seconds=0.05)
    assert t.iters > 2
    assert t.seconds.sum() >= 0.04  # the loop ran for at least ~min_seconds of calls


def test_time_callable_uses_sync_and_reports_no_compile():
    synced = []

    def work(delay, *, scale=1.0):
        time.sleep(delay * scale)
        return delay

    t = bench.time_callable(work, 0.002, scale=1.0, warmup=2, iters=5, sync=synced.append)
    assert len(synced) == 7  # every warm-up and timed call was synchronised
    assert t.compile_seconds is None
    assert t.first_call_seconds is not None
    assert t.iters == 5 and t.min >= 0.002


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU


def test_compiled_flops_of_matmul_matches_2mnk():
    m, k, n = 64, 48, 32
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    flops = bench.compiled_flops(compiled)
    assert flops == pytest.approx(2 * m * n * k, rel=0.10)
    assert bench.jitted_flops(jnp.matmul, jnp.ones((m, k)), jnp.ones((k, n))) == flops


class _FakeCompiled:
    def __init__(self, analysis=None, raises=False):
        self.analysis, self.raises = analysis, raises

    def cost_analysis(self):
        if self.raises:
            raise NotImplementedError
        return self.analysis

    def memory_analysis(self):
        if self.raises:
            raise NotImplementedError
        return self.analysis


@pytest.mark.parametrize(
    ("analysis", "raises", "expected"),
    [
        ({"flops": 10.0, "bytes accessed": 3.0}, False, 10.0),
        ([{"flops": 10.0}, {"flops": 5.0}], False, 15.0),
        ([{"bytes accessed": 1.0}], False, None),
        ({"bytes accessed": 1.0}, False, None),
        ({"flops": -1.0}, False, None),
        ([], False, None),
        (None, False, None),
        (None, True, None),
    ],
)
def test_compiled_flops_handles_backend_variants(analysis, raises, expected):
    assert bench.compiled_flops(_FakeCompiled(analysis, raises)) == expected


def test_mfu_arithmetic():
    # 1 GFLOP in 10 ms = 100 GFLOP/s; against a 1 TFLOP/s peak that is 10%.
    assert bench.achieved_flops(1e9, 0.01) == pytest.approx(1e11)
    assert bench.mfu(1e9, 0.01, 1e12) == pytest.approx(0.10)
    assert bench.mfu(None, 0.01, 1e12) is None
    with pytest.raises(ValueError):
        bench.mfu(1e9, 0.01, 0.0)
    with pytest.raises(ValueError):
        bench.mfu(1e9, 0.0, 1e12)


def test_measure_matmul_peak_is_positive_and_cached():
    n = 128  # tiny: this is a test of the plumbing, not a measurement
    peak = bench.measure_matmul_peak(n=n, iters=3, min_seconds=0.0)
    assert 1e6 < peak < 1e16
    key = (jax.local_devices()[0].platform, jax.local_devices()[0].device_kind, "float32", n)
    assert flops_mod._PEAK_CACHE[key] == peak
    start = time.perf_counter()
    assert bench.measure_matmul_peak(n=n) == peak  # served from the cache, no re-measurement
    assert time.perf_counter() - start < 0.05
    assert flops_mod.DEFAULT_MATMUL_N["cpu"] >= 1024


# ---------------------------------------------------------------------------------------------
# memory


def test_device_memory_stats_reports_its_source():
    mem = bench.device_memory_stats()
    assert mem.source in ("device", "host_rss")
    assert mem.peak_bytes is not None and mem.peak_bytes > 0
    if jax.default_backend() == "cpu":
        assert mem.source == "host_rss"
        # ru_maxrss is KiB on Linux: a Python process with JAX loaded is well over 10 MB.
        assert mem.peak_bytes > 10 * 2**20
    assert mem.to_dict()["source"] == mem.source


def test_compiled_memory_of_matmul():
    m, k, n = 64, 32, 16
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    mem = bench.compiled_memory(compiled)
    assert mem is not None
    assert mem.argument_bytes == (m * k + k * n) * 4
    assert mem.output_bytes == m * n * 4
    assert mem.total_bytes is not None and mem.total_bytes >= mem.argument_bytes + mem.output_bytes
    assert mem.to_dict()["total_bytes"] == mem.total_bytes
    assert bench.compiled_memory(_FakeCompiled(None)) is None
    assert bench.compiled_memory(_FakeCompiled(None, raises=True)) is None


# ---------------------------------------------------------------------------------------------
# money


def test_cost_arithmetic():
    # $3.60/h at 1000 predictions/s: 3.6M predictions per hour, so $1.00 per million.
    assert bench.dollars_per_million_predictions(1000, 3.60) == pytest.approx(1.00)
    assert bench.dollars_per_million_predictions(1000, 3.60, units=8) == pytest.approx(8.00)
    # A 30-minute run at $3/h costs $1.50; on 4 chips, $6.
    assert bench.dollars_per_run(1800, 3.0) == pytest.approx(1.50)
    assert bench.dollars_per_run(1800, 3.0, units=4) == pytest.approx(6.00)
    assert bench.dollars_per_run(0, 3.0) == 0.0
    with pytest.raises(ValueError):
        bench.dollars_per_million_predictions(0, 3.6)
    with pytest.raises(ValueError):
        bench.dollars_per_run(-1, 3.6)


def test_price_table_loads_with_sources_and_dates():
    assert bench.DEFAULT_PRICES_PATH.is_file()
    prices = bench.load_prices()
    assert {"cpu_vm", "a100", "h100", "tpu_v5e", "tpu_v6e"} <= set(prices.names)
    for price in prices:
        assert price.source.startswith("https://"), price.name
        assert dt.date.fromisoformat(price.as_of + "-01" * (3 - len(price.as_of.split("-"))))
        assert price.usd_per_hour > 0
        assert price.unit in ("VM", "GPU", "chip")
        assert price.provider and price.region and price.instance
        assert price.checked in ("provider page", "third-party page", "not re-checked")
        if price.checked == "third-party page":
            assert price.seen_at and price.seen_at.startswith("https://")
        if price.checked == "not re-checked":
            assert price.note and "not re-checked" in price.note
    assert prices.hourly("cpu_vm") == prices.get("cpu_vm").usd_per_hour


def test_unknown_hardware_names_the_known_ones():
    prices = bench.load_prices()
    with pytest.raises(KeyError) as info:
        prices.hourly("tpu_v99")
    assert isinstance(info.value, bench.UnknownHardwareError)
    message = str(info.value)
    assert "tpu_v99" in message
    for name in prices.names:
        assert name in message


def test_price_table_errors_are_clear(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(bench.PriceTableError, match=r"nope\.yaml"):
        bench.load_prices(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  usd_per_hour: 1.0\n  unit: VM\n  provider: P\n  as_of: '2026-01-01'\n")
    with pytest.raises(bench.PriceTableError, match="source"):
        bench.load_prices(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "x:\n  usd_per_hour: 2\n  unit: GPU\n  provider: P\n  source: https://example.com\n"
        "  as_of: 2026-01-01\n  region: r\n"
    )
    table = bench.load_prices(good)
    assert table.hourly("x") == 2.0 and table.get("x").as_of == "2026-01-01"


@pytest.mark.parametrize(
    ("platform", "kind", "expected"),
    [
        ("cpu", "cpu", "cpu_vm"),
        ("gpu", "NVIDIA H100 80GB HBM3", "h100"),
        ("cuda", "NVIDIA H100 PCIe", "h100"),
        ("gpu", "NVIDIA A100-SXM4-40GB", "a100"),
        ("tpu", "TPU v5 lite", "tpu_v5e"),
        ("tpu", "TPU v5e", "tpu_v5e"),
        ("tpu", "TPU v6 lite", "tpu_v6e"),
        ("gpu", "NVIDIA H200", None),
        ("tpu", "TPU v4", None),
    ],
)
def test_hardware_mapping(platform, kind, expected):
    assert bench.hardware_for(platform, kind) == expected


def test_default_hardware_is_priced():
    name = bench.default_hardware()
    if jax.default_backend() == "cpu":
        assert name == "cpu_vm"
    if name is not None:
        assert name in bench.load_prices()


# ---------------------------------------------------------------------------------------------
# results and tables


def test_write_results_writes_provenance(tmp_path):
    timing = bench.Timing.from_samples([0.001, 0.002, 0.003])
    payload = {"timing": timing, "qps": np.float32(1234.5), "shape": np.array([2, 3]), "n": 3}
    path = bench.write_results("unit_test", payload, results_dir=tmp_path / "results")
    assert path == tmp_path / "results" / "unit_test.json"
    doc = json.loads(path.read_text())
    hw = doc["hardware"]
    for key in ("jax_version", "backend", "device_kind", "device_count", "cpu_count", "cpu_model"):
        assert key in hw
    assert hw["jax_version"] == jax.__version__
    assert hw["backend"] == jax.default_backend()
    assert hw["device_count"] == jax.device_count()
    stamp = dt.datetime.fromisoformat(doc["timestamp_utc"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert doc["command"] == command_line()
    assert doc["results"]["qps"] == pytest.approx(1234.5)
    assert doc["results"]["shape"] == [2, 3]
    assert doc["results"]["timing"]["p50_s"] == pytest.approx(0.002)
    assert not list((tmp_path / "results").glob("*.tmp"))
    with pytest.raises(ValueError):
        bench.write_results("../escape", {}, results_dir=tmp_path)


def test_markdown_table_alignment_and_formats():
    rows = [
        {"model": "sasrec", "qps": 12345.678, "usd": 0.01234},
        {"model": "gru4rec", "qps": 99.5},
    ]
    text = bench.markdown_table(
        rows, ["model", "qps", "usd"], title="Serving", formats={"usd": ".3f"}
    )
    lines = text.splitlines()
    assert lines[0] == "### Serving"
    header, rule, first, second = lines[2:]
    assert header.startswith("| model") and "qps" in header
    assert rule.split("|")[1].strip().endswith("-")  # text column: left-aligned
    assert rule.split("|")[2].strip().endswith(":")  # numeric column: right-aligned
    assert "1.235e+04" in first and "0.012" in first
    assert second.split("|")[3].strip() == "-"  # missing value
    assert len({len(line) for line in (header, rule, first, second)}) == 1  # padded columns
    buf = io.StringIO()
    bench.print_table(rows, ["model", "qps"], file=buf)
    assert buf.getvalue().startswith("| model")


def test_command_line_records_a_module_run_as_typed(monkeypatch):
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("benchmarks.search", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/somewhere/benchmarks/search.py", "--workdir", "runs/x"])
    assert command_line() == ["-m", "benchmarks.search", "--workdir", "runs/x"]
    main.__spec__ = None  # a script run
    assert command_line() == ["/somewhere/benchmarks/search.py", "--workdir", "runs/x"]
