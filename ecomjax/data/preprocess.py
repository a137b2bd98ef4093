"""Cleaning a log into sequences as named steps, each one recorded in ``data_report.json``.

The steps run in one fixed order, each only when the config asks for it (the defaults change
nothing, so a prepared file such as ``Beauty.txt`` loads exactly as written):

1. ``min_rating``: drop interactions rated below it (explicit-feedback logs: "liked" only);
2. ``drop_duplicates``: drop exact repeats of an interaction (same sequence, item, timestamp and
   behaviour), keeping the first in the file; a log without timestamps has no way to tell a
   re-purchase from a duplicated row, so there it drops every repeat of (user, item);
3. chronological ordering (always): by timestamp within each sequence, **equal timestamps in
   file order** (``interactions`` module); a log without timestamps keeps file order;
4. ``session_gap``: split each user's stream into sessions wherever two consecutive
   interactions are more than this far apart (the time column's unit); each session is then a
   sequence, named ``user#k``;
5. ``drop_consecutive_repeats``: an item equal to the one just before it in the sequence (a
   page reload, a repeated view; with a behaviour column, only with the same behaviour) is
   dropped;
6. k-core (``min_user_interactions``, ``min_item_interactions``): iteratively drop sequences and
   items with fewer interactions until both hold, as the 5-core Amazon and MovieLens sets were
   made.

The report holds, after each step, the interactions, sequences (users or sessions) and items
left, the timestamp range, and how many equal-timestamp ties the file order decided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ecomjax.config import AT_LEAST_0, POSITIVE, Check
from ecomjax.data.interactions import (
    InteractionLog,
    chronological_order,
    equal_time_ties,
    first_appearance_codes,
)
from ecomjax.errors import InputError


@dataclass
class PreprocessConfig:
    """Which cleaning steps run (all off by default); the order is fixed (module doc)."""

    min_rating: float | None = None  # drop interactions rated below this (needs data.columns.rating)
    drop_duplicates: bool = False  # drop exact repeats of an interaction, keeping the first
    session_gap: float | None = None  # new session after a gap longer than this (time column's unit)
    drop_consecutive_repeats: bool = False  # drop an item equal to the one just before it
    min_user_interactions: int = 0  # k-core: sequences with fewer interactions are dropped ...
    min_item_interactions: int = 0  # ... and items with fewer, repeated until both hold

    RANGES: ClassVar[dict[str, Check]] = {"session_gap": POSITIVE, "min_user_interactions": AT_LEAST_0,
                                          "min_item_interactions": AT_LEAST_0}


def preprocess(log: InteractionLog, config: PreprocessConfig) -> tuple[InteractionLog, dict[str, Any]]:
    """The cleaned, chronologically ordered log and its report."""
    where = log.source or log.name
    steps: list[dict[str, Any]] = [_counts("read", log)]
    if config.min_rating is not None:
        if log.ratings is None:
            raise InputError(f"data.preprocess.min_rating is set but {where} has no rating column "
                             "(set data.columns.rating)")
        log = log.take(log.ratings >= config.min_rating)
        steps.append(_counts(f"min_rating {config.min_rating:g}", log))
    if config.drop_duplicates:
        log = log.take(_first_occurrences(log))
        steps.append(_counts("drop_duplicates", log))
    codes, _ = first_appearance_codes(log.keys)
    order = chronological_order(codes, log.times, log.rows)
    log = log.take(order)
    ties = equal_time_ties(codes[order], log.times)
    steps.append({**_counts("chronological order", log), "equal_timestamp_ties": ties})
    if config.session_gap is not None:
        if log.times is None:
            raise InputError(f"data.preprocess.session_gap is set but {where} has no timestamps "
                             "(set data.columns.time)")
        log = _sessions(log, codes[order], config.session_gap)
        steps.append(_counts(f"sessions (gap > {config.session_gap:g})", log))
    if config.drop_consecutive_repeats:
        keys, _ = first_appearance_codes(log.keys)
        repeat = (keys[1:] == keys[:-1]) & (log.items[1:] == log.items[:-1])
        if log.behaviors is not None:  # a purchase after a view of the same item is no repeat
            repeat &= log.behaviors[1:] == log.behaviors[:-1]
        repeat = np.r_[False, repeat]
        log = log.take(~repeat)
        steps.append(_counts("drop_consecutive_repeats", log))
    if config.min_user_interactions or config.min_item_interactions:
        log, rounds = _k_core(log, config.min_user_interactions, config.min_item_interactions)
        steps.append({**_counts(f"k-core (sequences >= {config.min_user_interactions}, items >= "
                                f"{config.min_item_interactions})", log), "rounds": rounds})
    report = {
        "source": where,
        "steps": steps,
        "time_range": None if log.times is None or not len(log) else [float(log.times.min()), float(log.times.max())],
        "tie_rule": "equal timestamps within a sequence keep their order in the file (stable sort)",
        "sequences_are": "sessions" if log.sessions is not None else "users",
    }
    return log, report


def _counts(step: str, log: InteractionLog) -> dict[str, Any]:
    return {"step": step, "interactions": len(log), "sequences": len(np.unique(log.keys)) if len(log) else 0,
            "items": len(np.unique(log.items)) if len(log) else 0}


def _first_occurrences(log: InteractionLog) -> np.ndarray:
    """Positions of the first occurrence of every distinct (sequence, item, time, behaviour)."""
    parts = [first_appearance_codes(log.keys)[0], first_appearance_codes(log.items)[0]]
    if log.times is not None:
        parts.append(first_appearance_codes(log.times)[0])
    if log.behaviors is not None:
        parts.append(first_appearance_codes(log.behaviors)[0])
    _, first = np.unique(np.stack(parts, axis=1), axis=0, return_index=True)
    return np.sort(first)


def _sessions(log: InteractionLog, user_codes: np.ndarray, gap: float) -> InteractionLog:
    """Sessions of an ordered log: a new one at each user change or gap longer than ``gap``."""
    new = np.r_[True, (user_codes[1:] != user_codes[:-1]) | (np.diff(log.times) > gap)]
    session = np.cumsum(new) - 1
    user_start = np.r_[True, user_codes[1:] != user_codes[:-1]]
    number = session - np.maximum.accumulate(np.where(user_start, session, 0))
    names = np.char.add(np.char.add(log.users.astype(str), "#"), number.astype(str))
    return replace(log, sessions=names)


def _k_core(log: InteractionLog, min_sequence: int, min_item: int) -> tuple[InteractionLog, int]:
    keys, _ = first_appearance_codes(log.keys)
    items, _ = first_appearance_codes(log.items)
    keep = np.ones(len(log), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        key_counts = np.bincount(keys[keep], minlength=keys.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        still = keep & (key_counts[keys] >= min_sequence) & (item_counts[items] >= min_item)
        if still.sum() == keep.sum():
            return log.take(keep), rounds
        keep = still
