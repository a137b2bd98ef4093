"""A search space: YAML in the dotted keys of config overrides, one distribution per key.

::

    train.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}
    model.dropout: {uniform: [0.1, 0.6], step: 0.05}
    model.hidden_size: {choice: [64, 128]}
    model.num_layers: {int: [1, 3]}
    train.optimizer: {choice: [adamw, adagrad]}
    train.weight_decay: {log_uniform: [1.0e-6, 1.0e-2], when: {train.optimizer: adamw}}
    baselines.gbdt: false              # a plain value: fixed for every trial

Distributions: ``uniform`` / ``log_uniform`` (floats, optional ``step`` on the linear one),
``int`` / ``log_int`` (integers, optional ``step``), ``choice`` (any YAML values). ``when``
makes a key conditional on keys listed before it (a value or a list of values); a trial whose
condition does not hold keeps the base config's value. Every key and every bound is checked
against the config schema before the first trial, so an unknown key or a value out of range
fails exactly like a bad ``key=value`` override, naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomjax.config import ConfigError, config_tree, load_config, read_config_file

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


@dataclass(frozen=True)
class Dimension:
    """One tuned key: its distribution and, when conditional, the values of earlier keys it needs."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def values_to_check(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws (or has fixed, for an enqueued trial)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.kind == "log_int")
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.kind == "log_uniform")

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:
            offset = (value - self.low) / self.step
            return abs(offset - round(offset)) < 1e-9
        return self.kind not in ("int", "log_int") or float(value).is_integer()

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(key, _UNSET) in allowed for key, allowed in self.when)


_UNSET = object()


@dataclass(frozen=True)
class SearchSpace:
    path: str
    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any]  # plain values: the same for every trial

    @classmethod
    def read(cls, path: str | Path) -> SearchSpace:
        """Parse a space file; a malformed entry is a ``ConfigError`` naming the file and key."""
        tree = read_config_file(path)
        dimensions: list[Dimension] = []
        fixed: dict[str, Any] = {}
        for key, entry in _flatten(tree):
            if isinstance(entry, dict) and (set(entry) & set(KINDS)):
                dimensions.append(_dimension(path, key, entry, [d.key for d in dimensions]))
            else:
                fixed[key] = entry
        if not dimensions:
            raise ConfigError(f"{path}: no tuned key; give at least one, e.g. "
                              "'train.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}'")
        return cls(str(path), tuple(dimensions), fixed)

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def check_against(self, config_source: Any, overrides: dict[str, Any]) -> None:
        """Load the base config once per bound / choice of every key (and once with the fixed
        values): what the schema refuses fails now, naming the key, not in trial 37."""
        base = {**overrides, **self.fixed}
        _load(self.path, "fixed values", config_source, base)
        for dim in self.dimensions:
            for value in dim.values_to_check():
                _load(self.path, dim.key, config_source, {**base, dim.key: value})

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's overrides: every active key's drawn value, then the fixed ones."""
        chosen: dict[str, Any] = {}
        for dim in self.dimensions:
            if dim.active(chosen):
                chosen[dim.key] = dim.suggest(trial)
        return {**chosen, **self.fixed}

    def baseline(self, config_source: Any, overrides: dict[str, Any]) -> dict[str, Any] | None:
        """The base config's own values of the tuned keys, when every one lies in the space: the
        trial that says what the untuned config scores (enqueued first). ``None`` otherwise."""
        tree = config_tree(load_config(config_source, {**overrides, **self.fixed}))
        chosen: dict[str, Any] = {}
        for dim in self.dimensions:
            if not dim.active(chosen):
                continue
            value = _get(tree, dim.key)
            if not dim.contains(value):
                return None
            chosen[dim.key] = value
        return chosen

    def check_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """A point to enqueue: tuned keys only, each value inside its distribution."""
        dims = {d.key: d for d in self.dimensions}
        for key, value in point.items():
            if key not in dims:
                raise ConfigError(f"enqueued point: {key!r} is not a tuned key of {self.path}; keys: {self.keys}")
            if not dims[key].contains(value):
                raise ConfigError(f"enqueued point: {key}={value!r} lies outside its distribution in {self.path}")
        return dict(point)

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every key must be a ``choice``."""
        loose = [d.key for d in self.dimensions if d.kind != "choice" or d.when]
        if loose:
            raise ConfigError(f"{self.path}: the grid sampler needs every key as an unconditional "
                              f"'choice' list; {loose[0]} is not")
        return {d.key: list(d.choices) for d in self.dimensions}


def _flatten(tree: dict[str, Any], prefix: str = ""):
    """Dotted ``(key, entry)`` pairs: nested sections are allowed besides dotted keys."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not (set(value) & set(KINDS)) and "when" not in value:
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _number(path: Any, key: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{path}: {key}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: {key}: {value!r} is not a finite number")
    if integer:
        if not float(value).is_integer():
            raise ConfigError(f"{path}: {key}: {value!r} is not an integer")
        return int(value)
    return float(value)


def _dimension(path: Any, key: str, entry: dict[str, Any], earlier: list[str]) -> Dimension:
    kinds = [k for k in KINDS if k in entry]
    unknown = sorted(set(entry) - set(KINDS) - {"step", "when"})
    if len(kinds) > 1 or unknown:
        raise ConfigError(f"{path}: {key}: give one of {list(KINDS)} (with optional 'step', 'when'), "
                          f"got {sorted(entry)}")
    kind, raw = kinds[0], entry[kinds[0]]
    when = _condition(path, key, entry.get("when"), earlier)
    if kind == "choice":
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{path}: {key}: choice takes a non-empty list, got {raw!r}")
        if "step" in entry:
            raise ConfigError(f"{path}: {key}: 'step' does not apply to a choice")
        return Dimension(key, kind, choices=tuple(raw), when=when)
    if not isinstance(raw, list) or len(raw) != 2:
        raise ConfigError(f"{path}: {key}: {kind} takes [low, high], got {raw!r}")
    integer = kind in ("int", "log_int")
    low, high = (_number(path, key, v, integer) for v in raw)
    if not low < high:
        raise ConfigError(f"{path}: {key}: low {low} must be below high {high}")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"{path}: {key}: {kind} needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        step = _number(path, f"{key}.step", step, integer)
        if step <= 0 or kind.startswith("log"):
            raise ConfigError(f"{path}: {key}: step must be > 0 and applies to uniform / int only")
    return Dimension(key, kind, low, high, step, when=when)


def _condition(path: Any, key: str, when: Any, earlier: list[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{path}: {key}.when: a mapping of earlier keys to values, got {when!r}")
    for other in when:
        if other not in earlier:
            raise ConfigError(f"{path}: {key}.when: {other!r} is not a tuned key listed before {key}")
    return tuple((other, tuple(v) if isinstance(v, list) else (v,)) for other, v in when.items())


def _load(path: Any, what: str, source: Any, overrides: dict[str, Any]) -> None:
    try:
        load_config(source, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {what}: {error}") from None


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
    return node


__all__ = ["Dimension", "SearchSpace"]
