"""Benchmark utilities shared by every ecomjax benchmark.

One module per concept, so that all benchmarks time, count, and price the same way:

* ``timing``: compile time kept apart, warm-up, ``block_until_ready`` timing, percentiles.
* ``flops``: FLOPs from XLA cost analysis, a measured matmul peak, MFU.
* ``memory``: run-time peak memory (device allocator or host RSS) and the compiler's plan.
* ``cost``: dollars per million predictions and per training run from ``configs/prices.yaml``.
* ``report``: JSON results stamped with hardware and command line; Markdown tables.

Typical use::

    from ecomjax import bench

    t = bench.time_jitted(predict, params, batch, iters=50)
    flops = bench.compiled_flops(t.compiled)
    peak = bench.measure_matmul_peak()
    prices = bench.load_prices()
    hw = bench.default_hardware()
    usd = bench.dollars_per_million_predictions(t.throughput(batch_size), prices.hourly(hw))
    bench.write_results("sasrec_predict", {"timing": t, "mfu": bench.mfu(flops, t.p50, peak)})
"""

from __future__ import annotations

from ecomjax.bench.cost import (
    DEFAULT_PRICES_PATH,
    Price,
    PriceTable,
    PriceTableError,
    UnknownHardwareError,
    default_hardware,
    dollars_per_million_predictions,
    dollars_per_run,
    hardware_for,
    load_prices,
)
from ecomjax.bench.flops import (
    achieved_flops,
    compiled_flops,
    jitted_flops,
    measure_matmul_peak,
    mfu,
)
from ecomjax.bench.memory import (
    CompiledMemory,
    PeakMemory,
    compiled_memory,
    device_memory_stats,
    host_peak_rss_bytes,
)
from ecomjax.bench.report import (
    DEFAULT_RESULTS_DIR,
    cpu_model,
    hardware_info,
    markdown_table,
    print_table,
    write_results,
)
from ecomjax.bench.timing import (
    Timing,
    format_seconds,
    percentiles,
    time_callable,
    time_jitted,
)

__all__ = [
    "DEFAULT_PRICES_PATH",
    "DEFAULT_RESULTS_DIR",
    "CompiledMemory",
    "PeakMemory",
    "Price",
    "PriceTable",
    "PriceTableError",
    "Timing",
    "UnknownHardwareError",
    "achieved_flops",
    "compiled_flops",
    "compiled_memory",
    "cpu_model",
    "default_hardware",
    "device_memory_stats",
    "dollars_per_million_predictions",
    "dollars_per_run",
    "format_seconds",
    "hardware_for",
    "hardware_info",
    "host_peak_rss_bytes",
    "jitted_flops",
    "load_prices",
    "markdown_table",
    "measure_matmul_peak",
    "mfu",
    "percentiles",
    "print_table",
    "time_callable",
    "time_jitted",
    "write_results",
]
