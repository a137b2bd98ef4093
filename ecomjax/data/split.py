"""Leave-one-out split, the protocol of SASRec, S3-Rec and generative-recommenders.

For a user with items ``s[0..n-1]``: the last item is the test target, the one before it the
validation target, and ``s[:n-2]`` is training data. Validation ranks ``s[n-2]`` given
``s[:n-2]``; test ranks ``s[n-1]`` given ``s[:n-1]`` (the validation item is history then).
Users with fewer than three items cannot give all three parts: their whole sequence is used for
training and they are counted (never silently) in ``LeaveOneOut.num_train_only``. A dataset in
which no user has three items has nothing to validate or test on, and is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecomjax.data.sequences import SequenceDataset
from ecomjax.errors import DataFormatError

MIN_EVALUATED_LENGTH = 3  # a training item, the validation target and the test target


@dataclass(frozen=True)
class EvalSplit:
    """Users to rank for one split: their history (model input) and held-out target."""

    users: np.ndarray  # int64 [U] row index into the dataset
    history_end: np.ndarray  # int64 [U]; history = dataset.items[offsets[u]:history_end]
    targets: np.ndarray  # int32 [U] the item to rank


@dataclass(frozen=True)
class LeaveOneOut:
    dataset: SequenceDataset
    train_end: np.ndarray  # int64 [num_users]; training items = items[offsets[u]:train_end[u]]
    valid: EvalSplit
    test: EvalSplit
    num_train_only: int  # users with < 3 items: training data, not evaluated

    def train_sequence(self, user: int) -> np.ndarray:
        return self.dataset.items[self.dataset.offsets[user] : self.train_end[user]]

    def train_item_counts(self) -> np.ndarray:
        """Interactions per item id in the training part only (index 0 = padding id, 0): what a
        model may know about popularity without seeing a validation or test target."""
        offsets = self.dataset.offsets
        user_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        in_train = np.arange(len(self.dataset.items)) < self.train_end[user_of]
        return np.bincount(self.dataset.items[in_train], minlength=self.dataset.num_items + 1)


def leave_one_out(dataset: SequenceDataset) -> LeaveOneOut:
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
    return LeaveOneOut(
        dataset=dataset,
        train_end=train_end,
        valid=valid,
        test=test,
        num_train_only=int((~evaluated).sum()),
    )
