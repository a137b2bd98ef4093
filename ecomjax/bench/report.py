"""Benchmark results as JSON files that say where they came from, and plain-text tables.

A number without its hardware, software versions and command line cannot be reproduced or
compared, so ``write_results`` stamps every file with all three plus a UTC time. Tables are
Markdown so the same text works in a terminal, a README and a pull request, with no dependency.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from ecomjax.errors import InputError

_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = _ROOT / "benchmarks" / "results"
RESULTS_ENV = "ECOMJAX_BENCH_RESULTS"  # where results go instead (a quick smoke must not touch the curated files)
RUNS_ENV = "ECOMJAX_BENCH_RUNS"  # where benchmarks put and look for their trained workdirs instead of runs/


def results_directory() -> Path:
    """The directory results are written to and earlier results read from: ``$ECOMJAX_BENCH_RESULTS``
    when set, else ``benchmarks/results`` (the curated files the docs quote)."""
    return Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else DEFAULT_RESULTS_DIR


def runs_directory() -> Path:
    """The root of the benchmarks' trained workdirs: ``$ECOMJAX_BENCH_RUNS`` when set, else ``runs/``."""
    return Path(os.environ[RUNS_ENV]) if os.environ.get(RUNS_ENV) else _ROOT / "runs"


def read_results(name: str) -> dict[str, Any] | None:
    """The whole document of ``{results_directory()}/{name}.json`` (provenance and ``results``), or None."""
    path = results_directory() / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cpu_model() -> str | None:
    """CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def hardware_info() -> dict[str, Any]:
    """What the numbers were measured on: accelerator, host CPU and software versions."""
    devices = jax.devices()
    first = devices[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable_cpus = os.cpu_count()
    try:
        import jaxlib

        jaxlib_version = getattr(jaxlib, "__version__", None)
    except ImportError:
        jaxlib_version = None
    return {
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "backend": jax.default_backend(),
        "device_kind": first.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable_cpus,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def _json_default(obj: Any) -> Any:
    """Encode what benchmarks naturally produce: numpy scalars/arrays, dataclasses, paths."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def command_line() -> list[str]:
    """The command as typed, for the record: ``["-m", "benchmarks.search", ...]`` for a module
    run (``sys.argv[0]`` is then the file's absolute path, which no one can retype elsewhere),
    else ``sys.argv``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return list(sys.argv)


def write_results(
    name: str, payload: Mapping[str, Any], results_dir: str | Path | None = None
) -> Path:
    """Write ``{results_dir}/{name}.json`` with hardware, UTC time and command line.

    ``payload`` goes under ``"results"`` so it can never overwrite the provenance keys. The file
    is written to a temporary name and renamed, so an interrupted run leaves the previous result
    intact rather than half a JSON file.
    """
    if not _NAME_RE.match(name):
        raise InputError(f"result name {name!r} must be a plain file stem (letters, digits, ._-)")
    directory = Path(results_dir) if results_dir is not None else results_directory()
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "name": name,
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "hardware": hardware_info(),
        "results": dict(payload),
    }
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=_json_default, allow_nan=True) + "\n")
    tmp.replace(path)
    return path


def _format_cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt is not None:
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    title: str | None = None,
    formats: Mapping[str, str] | None = None,
) -> str:
    """A Markdown table with padded columns, readable as plain text too.

    Numeric columns are right-aligned (so digits line up), others left-aligned. Missing values
    print as ``-``. ``formats`` maps a column to a format spec, e.g. ``{"usd_per_1m": ".4f"}``;
    other floats use 4 significant digits.
    """
    formats = formats or {}
    cells = [[_format_cell(row.get(col), formats.get(col)) for col in columns] for row in rows]
    numeric = [
        any(_is_number(row.get(col)) for row in rows)
        and all(row.get(col) is None or _is_number(row.get(col)) for row in rows)
        for col in columns
    ]
    widths = [
        max([len(str(col)), 3, *(len(line[i]) for line in cells)]) for i, col in enumerate(columns)
    ]

    def render(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if num else "-" * w
            for w, num in zip(widths, numeric, strict=True)
        )
        + " |"
    )
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [render([str(c) for c in columns]), rule, *(render(line) for line in cells)]
    return "\n".join(lines)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    title: str | None = None,
    formats: Mapping[str, str] | None = None,
    file: TextIO | None = None,
) -> None:
    """Print ``markdown_table(...)`` (to stdout by default) followed by a blank line."""
    print(markdown_table(rows, columns, title=title, formats=formats), file=file or sys.stdout)
    print(file=file or sys.stdout)
