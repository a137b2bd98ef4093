"""FLOPs per call from the compiler, and model FLOP utilisation (MFU) against a measured peak.

FLOPs come from XLA's own cost analysis of the compiled program rather than hand counts, so they
follow the model as it changes and include what the compiler actually kept (fusions, no dead
code). MFU divides achieved FLOP/s by the device's peak; the peak here is *measured*, by timing a
large square matmul on this device with this dtype, instead of taken from a datasheet. Datasheet
peaks assume tensor-core dtypes, boost clocks and sparsity that a CPU VM or an f32 run never sees,
which would make every MFU look small for reasons unrelated to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ecomjax.bench.timing import time_jitted
from ecomjax.errors import InputError

# Square matmul side per backend: large enough to saturate the matrix units, small enough to run
# in well under a second (CPU: ~2 GFLOP per call at 1024).
DEFAULT_MATMUL_N: dict[str, int] = {
    "cpu": 1024,
    "gpu": 8192,
    "cuda": 8192,
    "rocm": 8192,
    "tpu": 8192,
}

_PEAK_CACHE: dict[tuple[str, str, str, int], float] = {}


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled executable, from ``compiled.cost_analysis()``.

    JAX has returned this as a dict and, in older versions, as a list of dicts (one per
    executable); both are accepted and list entries are summed. Returns ``None`` when the backend
    gives no analysis or no ``'flops'`` entry, or reports a negative (unknown) count, so callers
    can print "n/a" rather than a wrong MFU.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends/plugins raise instead of returning None
        return None
    if analysis is None:
        return None
    entries = analysis if isinstance(analysis, list | tuple) else [analysis]
    values = [
        float(entry["flops"])
        for entry in entries
        if isinstance(entry, dict) and entry.get("flops") is not None
    ]
    if not values or any(v < 0 or math.isnan(v) for v in values):
        return None
    return sum(values)


def jitted_flops(fn: Callable[..., Any], *args: Any) -> float | None:
    """FLOPs of one call of ``fn(*args)``, compiling it (no execution) to ask XLA."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return compiled_flops(jitted.lower(*args).compile())


def _device_key(dtype: Any, n: int) -> tuple[str, str, str, int]:
    device = jax.local_devices()[0]
    return (device.platform, device.device_kind, jnp.dtype(dtype).name, n)


def measure_matmul_peak(
    dtype: Any = jnp.float32,
    n: int | None = None,
    *,
    iters: int = 10,
    min_seconds: float = 0.5,
    use_cache: bool = True,
) -> float:
    """Achieved FLOP/s of an ``n x n @ n x n`` matmul on the first local device.

    The best (minimum) call time is used: noise only ever makes a call slower, so the fastest
    call is the closest estimate of what the hardware can do. The result is cached per
    (backend, device kind, dtype, n) for the life of the process, because every benchmark in a
    run divides by the same peak and re-measuring would only add noise and time.

    On a shared machine (another job on the same cores) the peak comes out low and MFU high,
    even above 1.0; such an MFU says the peak was disturbed, not that the model beat the device.
    """
    backend = jax.default_backend()
    n = int(n if n is not None else DEFAULT_MATMUL_N.get(backend, 4096))
    if n < 1:
        raise InputError(f"matmul size must be positive, got {n}")
    key = _device_key(dtype, n)
    if use_cache and key in _PEAK_CACHE:
        return _PEAK_CACHE[key]

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype=dtype)
    b = jax.random.normal(kb, (n, n), dtype=dtype)
    timing = time_jitted(jnp.matmul, a, b, warmup=2, iters=iters, min_seconds=min_seconds)
    flops = compiled_flops(timing.compiled) or 2.0 * n**3
    peak = flops / timing.min
    _PEAK_CACHE[key] = peak
    return peak


def achieved_flops(flops_per_call: float, seconds_per_call: float) -> float:
    """FLOP/s achieved by one call."""
    if seconds_per_call <= 0:
        raise InputError(f"seconds_per_call must be positive, got {seconds_per_call}")
    return flops_per_call / seconds_per_call


def mfu(flops_per_call: float | None, seconds_per_call: float, peak_flops: float) -> float | None:
    """Model FLOP utilisation: achieved FLOP/s as a fraction of ``peak_flops`` (0.42 = 42%).

    ``None`` in, ``None`` out for the FLOP count, so a backend without cost analysis gives an
    explicit gap in the table instead of an exception mid-benchmark.
    """
    if flops_per_call is None:
        return None
    if peak_flops <= 0:
        raise InputError(f"peak_flops must be positive, got {peak_flops}")
    return achieved_flops(flops_per_call, seconds_per_call) / peak_flops
