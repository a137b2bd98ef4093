"""Peak memory, measured at run time and predicted by the compiler.

Two numbers answer different questions. The run-time peak says what the process really needed
(will it fit on a smaller, cheaper device?); it comes from the accelerator allocator when there is
one, and otherwise from the process's peak resident set, since the CPU backend keeps no allocator
statistics. The compile-time breakdown says *where* the bytes go (arguments, outputs, temporaries)
for one executable, which is what to look at when the run-time peak is too high.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass
from typing import Any, Literal

import jax


@dataclass(frozen=True)
class PeakMemory:
    """Peak bytes and where they were read from.

    ``source`` is ``"device"`` for the accelerator allocator's ``peak_bytes_in_use`` (device
    memory only), or ``"host_rss"`` for the process's peak resident set size (everything the
    process ever touched: Python, data, the CPU backend's buffers). The two are not comparable.
    The host figure is a high-water mark for the whole process lifetime and cannot be reset.
    """

    peak_bytes: int | None
    source: Literal["device", "host_rss"]
    platform: str
    device_kind: str
    bytes_in_use: int | None = None
    bytes_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux, bytes
    on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def device_memory_stats(device: Any = None) -> PeakMemory:
    """Peak memory of ``device`` (default: the first local device), falling back to host RSS."""
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator statistics may raise instead of returning None
        stats = None
    if stats and stats.get("peak_bytes_in_use") is not None:
        return PeakMemory(
            peak_bytes=int(stats["peak_bytes_in_use"]),
            source="device",
            platform=device.platform,
            device_kind=device.device_kind,
            bytes_in_use=_int_or_none(stats.get("bytes_in_use")),
            bytes_limit=_int_or_none(stats.get("bytes_limit")),
        )
    return PeakMemory(
        peak_bytes=host_peak_rss_bytes(),
        source="host_rss",
        platform=device.platform,
        device_kind=device.device_kind,
    )


@dataclass(frozen=True)
class CompiledMemory:
    """XLA's static memory plan for one executable, in bytes (``None`` where not reported)."""

    argument_bytes: int | None
    output_bytes: int | None
    temp_bytes: int | None
    alias_bytes: int | None
    generated_code_bytes: int | None
    peak_bytes: int | None = None  # the compiler's own peak estimate, where the backend gives one

    @property
    def total_bytes(self) -> int | None:
        """Arguments + outputs + temporaries + code, minus outputs that alias (donated) inputs:
        an upper bound on what the executable holds at once."""
        parts = (self.argument_bytes, self.output_bytes, self.temp_bytes)
        if any(p is None for p in parts):
            return None
        total = sum(parts) + (self.generated_code_bytes or 0) - (self.alias_bytes or 0)
        return int(total)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def compiled_memory(compiled: Any) -> CompiledMemory | None:
    """Memory plan from ``compiled.memory_analysis()``; ``None`` when the backend has none."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return None
    if analysis is None:
        return None
    if isinstance(analysis, list | tuple):  # older JAX: one entry per executable
        analysis = analysis[0] if analysis else None
        if analysis is None:
            return None

    def field(name: str) -> int | None:
        return _int_or_none(getattr(analysis, name, None))

    return CompiledMemory(
        argument_bytes=field("argument_size_in_bytes"),
        output_bytes=field("output_size_in_bytes"),
        temp_bytes=field("temp_size_in_bytes"),
        alias_bytes=field("alias_size_in_bytes"),
        generated_code_bytes=field("generated_code_size_in_bytes"),
        peak_bytes=field("peak_memory_in_bytes"),
    )


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
