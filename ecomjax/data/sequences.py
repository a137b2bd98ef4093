"""Interaction sequences: the ``user item item ...`` file format and its in-memory form.

Sequences are held as one flat item array plus offsets (CSR), so that splitting, packing and
evaluation batches are vectorised numpy work even for millions of interactions. Item ids are
remapped to ``1..num_items`` (0 is padding everywhere in ecomjax); the original ids are kept so
that predictions can be mapped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecomjax.data.files import INT64_MAX, open_text, parse_id
from ecomjax.errors import DataFormatError


@dataclass(frozen=True)
class SequenceDataset:
    """Time-ordered item sequences, one per user, with items remapped to ``1..num_items``."""

    items: np.ndarray  # int32 [total interactions], all users concatenated
    offsets: np.ndarray  # int64 [num_users + 1]; user u owns items[offsets[u]:offsets[u+1]]
    num_items: int
    user_ids: np.ndarray  # original user id of each row
    item_ids: np.ndarray  # original id of each remapped item; item_ids[0] is the padding slot
    name: str = "sequences"
    source: str = ""  # the file read (messages name it), "" for sequences built in memory
    times: np.ndarray | None = None  # float64 [total interactions] timestamps, when the source has them
    behaviors: np.ndarray | None = None  # int8 [total interactions] index into behavior_names
    behavior_names: tuple[str, ...] = ()  # e.g. ("buy", "cart", "click")
    report: dict = field(default_factory=dict, compare=False)  # how it was made: data_report.json

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]


def from_lists(
    sequences: list[list[int]] | list[np.ndarray], num_items: int, name: str = "sequences"
) -> SequenceDataset:
    """Build a dataset from already remapped sequences (ids in ``1..num_items``)."""
    if len(sequences) == 0:
        raise DataFormatError(f"{name}: no sequences")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if np.any(lengths == 0):
        raise DataFormatError(f"{name}: user {int(np.argmin(lengths))} has an empty sequence")
    items = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences])
    if items.min() < 1 or items.max() > num_items:
        raise DataFormatError(f"{name}: item ids must lie in 1..{num_items}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return SequenceDataset(
        items=items,
        offsets=offsets,
        num_items=num_items,
        user_ids=np.arange(len(sequences)),
        item_ids=np.arange(num_items + 1),
        name=name,
    )


def read_sequence_file(path: str | Path) -> SequenceDataset:
    """Read ``user item item ...`` lines (whitespace separated integer ids, time-ordered).

    Blank lines are allowed and carry nothing. Everything else must be well formed: a line with
    a user but no items, a token that is not an integer id (ASCII digits, at most 2**63 - 1), or
    a user that appears twice is an error naming the file and line, because dropping it would
    silently change the benchmark. The file must be UTF-8 text (``ecomjax.data.files.read_text``).
    Item ids are remapped in increasing order of the original id, so files whose ids are
    already ``1..N`` (Amazon/S3-Rec, MovieLens) keep them.
    """
    path = Path(path)
    users: list[int] = []
    rows: list[list[int]] = []
    seen: dict[int, int] = {}
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            ids = [_sequence_id(t, f"{path}:{line_no}") for t in tokens]
            if len(ids) < 2:
                raise DataFormatError(f"{path}:{line_no}: user {ids[0]} has no items")
            if ids[0] in seen:
                raise DataFormatError(
                    f"{path}:{line_no}: user {ids[0]} already appeared on line {seen[ids[0]]}"
                )
            seen[ids[0]] = line_no
            users.append(ids[0])
            rows.append(ids[1:])
    if not rows:
        raise DataFormatError(f"{path}: no sequences found")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    raw = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
    item_ids, remapped = np.unique(raw, return_inverse=True)
    return SequenceDataset(
        items=(remapped + 1).astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        num_items=len(item_ids),
        user_ids=np.asarray(users),
        item_ids=np.concatenate([[-1], item_ids]),
        name=path.stem,
        source=str(path),
    )


def _sequence_id(token: str, where: str) -> int:
    if token.startswith("-") and token[1:].isascii() and token[1:].isdigit():
        raise DataFormatError(f"{where}: negative id {token}")
    if not (token.isascii() and token.isdigit()):
        raise DataFormatError(f"{where}: {token!r} is not an integer id; expected 'user item item ...' "
                              "(ASCII digits)")
    return parse_id(token, where, high=INT64_MAX)
