"""Money cost of a benchmark: dollars per million predictions and dollars per training run.

Throughput alone cannot say whether a TPU beats a CPU VM for a recommender: a device that is ten
times faster but twenty times dearer loses. Every benchmark therefore converts its measured rate
into dollars with one shared, dated price table (``configs/prices.yaml``). Each entry names its
source page and the date it was read, because cloud prices change and a cost figure is only as
good as the price behind it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import yaml

from ecomjax.errors import InputError, UnknownKeyError

DEFAULT_PRICES_PATH = Path(__file__).resolve().parents[2] / "configs" / "prices.yaml"

_REQUIRED = ("usd_per_hour", "unit", "provider", "source", "as_of")


class PriceTableError(InputError):
    """The price table file is missing or an entry is malformed."""


class UnknownHardwareError(UnknownKeyError):
    """A hardware name that is not in the price table; the message lists the known names."""


@dataclass(frozen=True)
class Price:
    """One on-demand hourly price: what is rented, from whom, where, and how we know."""

    name: str
    usd_per_hour: float
    unit: str  # what one hour buys: "VM", "GPU", "chip"
    provider: str
    source: str  # the provider's public pricing page
    as_of: str  # date the price was read (or last known; see ``note``)
    instance: str | None = None
    region: str | None = None
    # How the number was checked when the table was written: "provider page", "third-party page"
    # (``seen_at`` names it) or "not re-checked" (a remembered list price; see ``note``).
    checked: str = "not re-checked"
    seen_at: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PriceTable:
    """Named hourly prices loaded from YAML; ``hourly(name)`` is the one call most code needs."""

    def __init__(self, entries: dict[str, Price], path: Path | None = None) -> None:
        self.entries = dict(entries)
        self.path = path

    @property
    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Price:
        """The full entry for ``name``; unknown names raise with the list of known ones."""
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownHardwareError(
                f"no price for hardware {name!r}; known: {', '.join(self.names)}"
                + (f" (from {self.path})" if self.path else "")
            ) from None

    def hourly(self, name: str) -> float:
        """On-demand USD per hour of one ``unit`` (VM, GPU or chip) of ``name``."""
        return self.get(name).usd_per_hour


def load_prices(prices_path: str | Path | None = None) -> PriceTable:
    """Read the price table (default: the repository's ``configs/prices.yaml``)."""
    path = Path(prices_path) if prices_path is not None else DEFAULT_PRICES_PATH
    if not path.is_file():
        raise PriceTableError(
            f"price table not found at {path}; pass prices_path=... or restore configs/prices.yaml"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise PriceTableError(f"{path}: expected a mapping of hardware name -> entry")
    entries: dict[str, Price] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise PriceTableError(f"{path}: entry {name!r} is not a mapping")
        missing = [k for k in _REQUIRED if entry.get(k) in (None, "")]
        if missing:
            raise PriceTableError(f"{path}: entry {name!r} lacks {', '.join(missing)}")
        usd = float(entry["usd_per_hour"])
        if not math.isfinite(usd) or usd <= 0:
            raise PriceTableError(f"{path}: entry {name!r} has usd_per_hour={usd}")
        known = set(Price.__dataclass_fields__) - {"name", "usd_per_hour", "as_of"}
        extra = {k: entry[k] for k in known if k in entry}
        entries[str(name)] = Price(
            name=str(name), usd_per_hour=usd, as_of=str(entry["as_of"]), **extra
        )
    return PriceTable(entries, path)


def dollars_per_million_predictions(
    predictions_per_second: float, hourly_usd: float, *, units: int = 1
) -> float:
    """USD to make one million predictions at a sustained rate on ``units`` rented devices.

    One hour of ``units`` devices costs ``units * hourly_usd`` and yields
    ``3600 * predictions_per_second`` predictions.
    """
    if predictions_per_second <= 0:
        raise InputError(f"predictions_per_second must be positive, got {predictions_per_second}")
    return units * hourly_usd / (predictions_per_second * 3600.0) * 1e6


def dollars_per_run(seconds: float, hourly_usd: float, *, units: int = 1) -> float:
    """USD for a run of ``seconds`` wall-clock on ``units`` devices (per-second billing)."""
    if seconds < 0:
        raise InputError(f"seconds must be non-negative, got {seconds}")
    return units * hourly_usd * seconds / 3600.0


def hardware_for(platform: str, device_kind: str) -> str | None:
    """Price-table name for a JAX platform and device kind, or ``None`` if there is no entry.

    A GPU or TPU the table does not list (an H200, a TPU v4) maps to ``None`` rather than to the
    nearest entry: a cost computed with the wrong device's price is worse than none.
    """
    platform = platform.lower()
    kind = device_kind.lower()
    if platform == "cpu":
        return "cpu_vm"
    if platform in ("gpu", "cuda", "rocm"):
        if "h100" in kind:
            return "h100"
        if "a100" in kind:
            return "a100"
        return None
    if platform == "tpu":
        if "v5 lite" in kind or "v5e" in kind or "v5litepod" in kind:
            return "tpu_v5e"
        if "v6" in kind:  # "TPU v6 lite" / "TPU v6e" (Trillium)
            return "tpu_v6e"
        return None
    return None


def default_hardware(device: Any = None) -> str | None:
    """Price-table name for ``device`` (default: the first local JAX device)."""
    device = device if device is not None else jax.local_devices()[0]
    return hardware_for(device.platform, device.device_kind)
