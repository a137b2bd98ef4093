"""Train / validation / test splits of sequences: leave-one-out, global temporal, per-user ratio.

Every split has one shape: per sequence, a training prefix ``items[offsets[u]:train_end[u]]``,
and evaluation *cases* (a history prefix and the item that follows it) for validation and test.
A case's history is everything before its target, so it may hold items the model never trained
on (the validation item at test time): that is what a deployed model sees too.

* **leave-one-out** (SASRec, S3-Rec, generative-recommenders): the last item is the test target,
  the one before it the validation target, the rest training. Sequences with fewer than three
  items are training data only, counted (never silently) in ``num_train_only``.
* **temporal** (global time cutoffs, the leakage-free protocol: no interaction at or after the
  validation cutoff is trained on, for any user): interactions before ``valid_cutoff`` train;
  a sequence's first interaction in ``[valid_cutoff, test_cutoff)`` is its validation target and
  its first at or after ``test_cutoff`` its test target (``targets: all`` makes every one of them a
  case). Cutoffs are timestamps, or come from fractions: the test period holds the last
  ``test_fraction`` of all interactions in time, the validation period the ``valid_fraction``
  before it.
* **ratio**: per sequence, the first ``1 - valid_fraction - test_fraction`` of its interactions
  (rounded down, at least one) train, then the validation part, then the test part (each rounded
  down); the first item of each part is the case (``targets: all``: every item).

A case needs at least one earlier interaction (a sequential model has nothing to read
otherwise); a split that leaves no validation or no test case is an error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ecomjax.config import FRACTION, Check
from ecomjax.data.sequences import SequenceDataset
from ecomjax.errors import DataFormatError, InputError

MIN_EVALUATED_LENGTH = 3  # a training item, the validation target and the test target


@dataclass(frozen=True)
class EvalSplit:
    """Users to rank for one split: their history (model input) and held-out target."""

    users: np.ndarray  # int64 [U] row index into the dataset
    history_end: np.ndarray  # int64 [U]; history = dataset.items[offsets[u]:history_end]
    targets: np.ndarray  # int32 [U] the item to rank


@dataclass
class SplitConfig:
    """How sequences become training data and validation / test cases (module doc)."""

    method: Literal["leave_one_out", "temporal", "ratio"] = "leave_one_out"
    valid_fraction: float = 0.1  # temporal: of all interactions, by time; ratio: of each sequence
    test_fraction: float = 0.1
    valid_cutoff: float | None = None  # temporal: timestamp where validation starts (overrides the fraction)
    test_cutoff: float | None = None  # temporal: timestamp where test starts
    targets: Literal["first", "all"] = "first"  # temporal / ratio: first held-out item per sequence, or all

    RANGES: ClassVar[dict[str, Check]] = {"valid_fraction": FRACTION, "test_fraction": FRACTION}


@dataclass(frozen=True)
class SequenceSplit:
    dataset: SequenceDataset
    train_end: np.ndarray  # int64 [num_users]; training items = items[offsets[u]:train_end[u]]
    valid: EvalSplit
    test: EvalSplit
    num_train_only: int  # sequences with no validation and no test case
    protocol: dict[str, Any] = field(default_factory=dict)  # what metrics.json records

    def train_sequence(self, user: int) -> np.ndarray:
        return self.dataset.items[self.dataset.offsets[user] : self.train_end[user]]

    def train_item_counts(self) -> np.ndarray:
        """Interactions per item id in the training part only (index 0 = padding id, 0): what a
        model may know about popularity without seeing a validation or test target."""
        offsets = self.dataset.offsets
        user_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        in_train = np.arange(len(self.dataset.items)) < self.train_end[user_of]
        return np.bincount(self.dataset.items[in_train], minlength=self.dataset.num_items + 1)


def make_split(dataset: SequenceDataset, config: SplitConfig) -> SequenceSplit:
    """The split ``config`` names (``data.split``)."""
    if config.method == "leave_one_out":
        return leave_one_out(dataset)
    if config.method == "temporal":
        return temporal_split(dataset, config)
    return ratio_split(dataset, config)


def leave_one_out(dataset: SequenceDataset) -> SequenceSplit:
    start, end = dataset.offsets[:-1], dataset.offsets[1:]
    lengths = end - start
    evaluated = lengths >= MIN_EVALUATED_LENGTH
    if not evaluated.any():
        counts = np.bincount(lengths, minlength=MIN_EVALUATED_LENGTH)
        short = ", ".join(f"{int(counts[n])} with {n}" for n in (2, 1) if counts[n])
        raise DataFormatError(
            f"{dataset.source or dataset.name}: all {len(lengths)} users have fewer than "
            f"{MIN_EVALUATED_LENGTH} items ({short}); leave-one-out needs at least "
            f"{MIN_EVALUATED_LENGTH} items for a user to give training, validation and test data")
    train_end = np.where(evaluated, end - 2, end)
    users = np.flatnonzero(evaluated)
    valid = EvalSplit(users=users, history_end=end[users] - 2, targets=dataset.items[end[users] - 2])
    test = EvalSplit(users=users, history_end=end[users] - 1, targets=dataset.items[end[users] - 1])
    return SequenceSplit(
        dataset=dataset,
        train_end=train_end,
        valid=valid,
        test=test,
        num_train_only=int((~evaluated).sum()),
        protocol={"split": "leave-one-out (last item test, second-to-last validation)"},
    )


def temporal_split(dataset: SequenceDataset, config: SplitConfig) -> SequenceSplit:
    where = dataset.source or dataset.name
    if dataset.times is None:
        raise InputError(f"data.split.method=temporal needs timestamps, and {where} has none "
                         "(set data.columns.time on a log that has them)")
    times = dataset.times
    test_cut = config.test_cutoff if config.test_cutoff is not None else _time_quantile(times, 1 - config.test_fraction)
    valid_cut = config.valid_cutoff if config.valid_cutoff is not None else _time_quantile(
        times, 1 - config.test_fraction - config.valid_fraction)
    if not valid_cut <= test_cut:
        raise InputError(f"data.split: valid_cutoff {valid_cut:g} is after test_cutoff {test_cut:g}")
    period = np.where(times < valid_cut, 0, np.where(times < test_cut, 1, 2))
    start = dataset.offsets[:-1]
    users = np.repeat(np.arange(dataset.num_users), dataset.lengths)
    train_end = start + np.bincount(users, weights=period == 0, minlength=dataset.num_users).astype(np.int64)
    valid = _cases(dataset, period == 1, config.targets, where, "validation")
    test = _cases(dataset, period == 2, config.targets, where, "test")
    return SequenceSplit(
        dataset=dataset, train_end=train_end, valid=valid, test=test,
        num_train_only=_not_evaluated(dataset, valid, test),
        protocol={"split": f"temporal: train before {valid_cut:g}, validation [{valid_cut:g}, {test_cut:g}), "
                           f"test from {test_cut:g} ({_TARGETS[config.targets]} per sequence and period)",
                  "valid_cutoff": float(valid_cut), "test_cutoff": float(test_cut), "targets": config.targets,
                  "train_interactions": int((period == 0).sum()), "valid_cases": len(valid.targets),
                  "test_cases": len(test.targets)})


def ratio_split(dataset: SequenceDataset, config: SplitConfig) -> SequenceSplit:
    where = dataset.source or dataset.name
    lengths = dataset.lengths
    train_len = np.maximum(1, np.floor(lengths * (1 - config.valid_fraction - config.test_fraction)).astype(np.int64))
    valid_len = np.minimum(lengths - train_len, np.floor(lengths * config.valid_fraction).astype(np.int64))
    test_len = np.minimum(lengths - train_len - valid_len, np.floor(lengths * config.test_fraction).astype(np.int64))
    position = np.arange(len(dataset.items)) - np.repeat(dataset.offsets[:-1], lengths)
    t, v = np.repeat(train_len, lengths), np.repeat(valid_len, lengths)
    end = np.repeat(train_len + valid_len + test_len, lengths)
    valid = _cases(dataset, (position >= t) & (position < t + v), config.targets, where, "validation")
    test = _cases(dataset, (position >= t + v) & (position < end), config.targets, where, "test")
    return SequenceSplit(
        dataset=dataset, train_end=dataset.offsets[:-1] + train_len, valid=valid, test=test,
        num_train_only=_not_evaluated(dataset, valid, test),
        protocol={"split": f"per-sequence ratio {1 - config.valid_fraction - config.test_fraction:g} / "
                           f"{config.valid_fraction:g} / {config.test_fraction:g} (parts rounded down, at least one "
                           f"training item; {_TARGETS[config.targets]} per part)",
                  "targets": config.targets, "valid_cases": len(valid.targets), "test_cases": len(test.targets)})


_TARGETS = {"first": "the first held-out interaction", "all": "every held-out interaction"}


def _time_quantile(times: np.ndarray, q: float) -> float:
    """The timestamp at which a fraction ``q`` of all interactions lie strictly before it."""
    ordered = np.sort(times)
    index = min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered)))))
    return float(ordered[index]) if q < 1 else float(np.inf)


def _cases(dataset: SequenceDataset, held_out: np.ndarray, targets: str, where: str, name: str) -> EvalSplit:
    """Evaluation cases from the held-out positions: the first per sequence, or all of them;
    a position with no earlier interaction in its sequence cannot be a case."""
    users = np.repeat(np.arange(dataset.num_users), dataset.lengths)
    index = np.arange(len(dataset.items))
    keep = held_out & (index > dataset.offsets[:-1][users])
    if targets == "first":
        keep = _first_per_user(users, keep)
    positions = np.flatnonzero(keep)
    if len(positions) == 0:
        raise DataFormatError(f"{where}: the split leaves no {name} case (no sequence has an interaction in the "
                              f"{name} part after an earlier one); change data.split")
    return EvalSplit(users=users[positions], history_end=positions.astype(np.int64),
                     targets=dataset.items[positions])


def _first_per_user(users: np.ndarray, keep: np.ndarray) -> np.ndarray:
    positions = np.flatnonzero(keep)
    _, first = np.unique(users[positions], return_index=True)
    out = np.zeros_like(keep)
    out[positions[first]] = True
    return out


def _not_evaluated(dataset: SequenceDataset, valid: EvalSplit, test: EvalSplit) -> int:
    evaluated = np.zeros(dataset.num_users, dtype=bool)
    evaluated[valid.users] = True
    evaluated[test.users] = True
    return int((~evaluated).sum())
