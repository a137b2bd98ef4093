"""Wall-clock timing that reports what a benchmark reader needs and nothing that misleads them.

Three things make naive JAX timings wrong, and each has a rule here:

* JAX dispatch is asynchronous: a call returns before the device has finished. Every timed call
  therefore ends with ``jax.block_until_ready`` on its output, or the numbers measure dispatch.
* The first call of a jitted function traces and compiles, which can take longer than thousands of
  steady-state calls. Compilation is done up front through ``lower(...).compile()`` and reported
  as ``compile_seconds``, never mixed into the per-call samples.
* The first few executed calls still pay one-time costs (allocator growth, caches, autotuning on
  GPU). A warm-up phase runs and discards them; the first warm-up call is kept apart as
  ``first_call_seconds`` because it is the cold-start cost a server would see.

A mean alone hides the tail that decides latency budgets, so every result carries p50/p95/p99 and
the raw samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ecomjax.errors import InputError

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0)


def percentiles(
    samples: Sequence[float] | np.ndarray, qs: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[float, float]:
    """Percentiles of ``samples`` as ``{q: value}``, with numpy's default (linear) interpolation.

    Kept as one helper so every benchmark computes its tail the same way; two reports that
    disagree on how p99 is interpolated cannot be compared.
    """
    values = np.asarray(samples, dtype=np.float64).ravel()
    if values.size == 0:
        raise InputError("percentiles() needs at least one sample")
    qs = tuple(float(q) for q in qs)
    for q in qs:
        if not 0.0 <= q <= 100.0:
            raise InputError(f"percentile {q} is outside [0, 100]")
    return {q: float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}


@dataclass(frozen=True)
class Timing:
    """Per-call wall-clock seconds of a steady-state loop, with compile time kept apart.

    ``seconds`` holds one entry per timed call. ``compile_seconds`` is trace + lower + compile
    as this call paid it (``None`` for callables that are not compiled by JAX): if the same
    function and shapes were compiled earlier in the process, or the persistent compilation
    cache is on, it is a cache hit and near zero, so measure compile time in a fresh process.
    ``first_call_seconds`` is the first warm-up call, the cold start after compilation.
    """

    seconds: np.ndarray
    p50: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    iters: int
    warmup: int
    compile_seconds: float | None = None
    first_call_seconds: float | None = None
    # The compiled executable, so callers can ask it for FLOPs and memory without compiling again.
    compiled: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[float] | np.ndarray,
        *,
        warmup: int = 0,
        compile_seconds: float | None = None,
        first_call_seconds: float | None = None,
        compiled: Any = None,
    ) -> Timing:
        """Summarise raw per-call seconds."""
        seconds = np.asarray(samples, dtype=np.float64).ravel()
        pct = percentiles(seconds)
        return cls(
            seconds=seconds,
            p50=pct[50.0],
            p95=pct[95.0],
            p99=pct[99.0],
            mean=float(seconds.mean()),
            std=float(seconds.std(ddof=1)) if seconds.size > 1 else 0.0,
            min=float(seconds.min()),
            max=float(seconds.max()),
            iters=int(seconds.size),
            warmup=warmup,
            compile_seconds=compile_seconds,
            first_call_seconds=first_call_seconds,
            compiled=compiled,
        )

    def throughput(self, items_per_call: float = 1.0, *, stat: str = "p50") -> float:
        """Items per second at the chosen per-call statistic (``"p50"`` by default, robust to
        the occasional slow call; ``"mean"`` gives the long-run rate including them)."""
        seconds = float(getattr(self, stat))
        return items_per_call / seconds

    def to_dict(self, *, include_samples: bool = False) -> dict[str, Any]:
        """JSON-ready summary; raw samples only on request because they can be long."""
        out: dict[str, Any] = {
            "p50_s": self.p50,
            "p95_s": self.p95,
            "p99_s": self.p99,
            "mean_s": self.mean,
            "std_s": self.std,
            "min_s": self.min,
            "max_s": self.max,
            "iters": self.iters,
            "warmup": self.warmup,
            "compile_s": self.compile_seconds,
            "first_call_s": self.first_call_seconds,
        }
        if include_samples:
            out["samples_s"] = self.seconds.tolist()
        return out


def _to_device(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Move numpy leaves to the device once, so host-to-device copies are not timed per call."""

    def put(x: Any) -> Any:
        return jax.device_put(x) if isinstance(x, np.ndarray) else x

    return jax.block_until_ready(jax.tree_util.tree_map(put, args))


def _timed_loop(
    call: Callable[[], Any],
    sync: Callable[[Any], Any],
    *,
    warmup: int,
    iters: int,
    min_seconds: float,
    max_iters: int,
) -> tuple[np.ndarray, float | None]:
    """Run warm-up then timed calls; returns (samples, first warm-up call seconds)."""
    if iters < 1:
        raise InputError(f"iters must be >= 1, got {iters}")
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    max_iters = max(max_iters, iters)
    first_call: float | None = None
    for i in range(warmup):
        start = time.perf_counter()
        sync(call())
        if i == 0:
            first_call = time.perf_counter() - start
    samples: list[float] = []
    loop_start = time.perf_counter()
    while len(samples) < max_iters:
        start = time.perf_counter()
        sync(call())
        samples.append(time.perf_counter() - start)
        if len(samples) >= iters and time.perf_counter() - loop_start >= min_seconds:
            break
    return np.asarray(samples), first_call


def time_jitted(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    iters: int = 20,
    min_seconds: float = 0.0,
    max_iters: int = 10_000,
    static_argnums: Sequence[int] = (),
) -> Timing:
    """Time a JAX function: compile once (timed apart), warm up, then time calls to completion.

    ``fn`` may be a plain function (it is wrapped in ``jax.jit``) or an already-jitted one. The
    executable from ``lower(*args).compile()`` is what gets called, so the loop measures the
    program and not jit's cache lookup. Timing stops after ``iters`` calls once ``min_seconds``
    have passed (capped at ``max_iters``); a floor in seconds keeps fast functions from being
    judged on a handful of microsecond samples.

    Values that must be static are listed in ``static_argnums``; they are passed to ``lower`` and
    left out of the timed calls, which is how compiled executables take them. Numpy inputs are
    moved to the device once beforehand: transfer belongs to the data pipeline, not the kernel.
    """
    static = {i if i >= 0 else len(args) + i for i in static_argnums}
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn, static_argnums=tuple(sorted(static)))
    args = _to_device(args)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    dynamic = tuple(a for i, a in enumerate(args) if i not in static)

    samples, first_call = _timed_loop(
        lambda: compiled(*dynamic),
        jax.block_until_ready,
        warmup=warmup,
        iters=iters,
        min_seconds=min_seconds,
        max_iters=max_iters,
    )
    return Timing.from_samples(
        samples,
        warmup=warmup,
        compile_seconds=compile_seconds,
        first_call_seconds=first_call,
        compiled=compiled,
    )


def time_callable(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    iters: int = 20,
    min_seconds: float = 0.0,
    max_iters: int = 10_000,
    sync: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Timing:
    """Time any callable (a PyTorch or numpy peer) with the same warm-up and percentiles.

    ``sync`` is called with each output before the clock stops: pass e.g.
    ``lambda _: torch.cuda.synchronize()`` for asynchronous frameworks, or leave it ``None`` for
    synchronous code. Any lazy compilation such a framework does lands in ``first_call_seconds``
    (the first warm-up call), which is as close to ``compile_seconds`` as it can be measured from
    outside; ``compile_seconds`` stays ``None``.
    """
    samples, first_call = _timed_loop(
        lambda: fn(*args, **kwargs),
        sync if sync is not None else (lambda out: out),
        warmup=warmup,
        iters=iters,
        min_seconds=min_seconds,
        max_iters=max_iters,
    )
    return Timing.from_samples(samples, warmup=warmup, first_call_seconds=first_call)


def format_seconds(seconds: float | None) -> str:
    """Human units for tables: ``812 us``, ``3.41 ms``, ``2.07 s``."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"
