"""An interaction log as columns, and how it becomes time-ordered sequences.

Every reader (sequence files, ``user item`` pairs, CSV / TSV logs, Parquet, RecBole ``.inter``)
produces an ``InteractionLog``: one entry per interaction, original ids as the file spells them,
and the entry's line (or row) in the file. The line is what error messages name, and it is the
tie rule of chronological ordering: interactions of one sequence with **equal timestamps keep
their order in the file**. A sort that is not stable on ties (pandas' default quicksort, used by
the generative-recommenders MovieLens preprocessing) reorders them arbitrarily and so changes
which item is held out as the test target; ours never does, and ``data_report.json`` counts how
many ties the rule decided.

Ids: a column whose values are all ASCII digits (and fit int64) is read as integers, so that
``10`` sorts after ``9`` and files with ids ``1..N`` keep them; any other column keeps its
strings. Dense item ids are assigned in increasing order of the original id (0 is padding), and
sequences are numbered in order of their first appearance in the file: the ids of
``Beauty.txt`` are the same whichever format it is written in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ecomjax.data.sequences import SequenceDataset
from ecomjax.errors import DataFormatError

_DIGITS_MAX_LEN = 18  # every 18-digit number fits int64; longer ones are checked one by one


@dataclass(frozen=True)
class InteractionLog:
    """Interactions as parallel columns; the optional ones are None when the source has none."""

    users: np.ndarray  # original user (or session) id of each interaction: int64, or str
    items: np.ndarray  # original item id: int64, or str
    rows: np.ndarray  # int64 line (or row) in the source, increasing in file order
    times: np.ndarray | None = None  # float64 timestamps (seconds, or the file's own unit)
    ratings: np.ndarray | None = None  # float64
    behaviors: np.ndarray | None = None  # str: click / cart / buy ...
    sessions: np.ndarray | None = None  # original session id (then sequences are sessions)
    source: str = ""  # file the log was read from (messages name it)
    name: str = "log"

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray) -> InteractionLog:
        """The interactions at ``index`` (a boolean mask or positions), every column alike."""

        def pick(column):
            return None if column is None else column[index]

        return replace(self, users=self.users[index], items=self.items[index], rows=self.rows[index],
                       times=pick(self.times), ratings=pick(self.ratings), behaviors=pick(self.behaviors),
                       sessions=pick(self.sessions))

    @property
    def keys(self) -> np.ndarray:
        """What one sequence is: a session when the log has sessions, else a user."""
        return self.sessions if self.sessions is not None else self.users


def ids_from_strings(values: np.ndarray) -> np.ndarray:
    """Original ids: int64 when every value is ASCII digits that fit int64, else the strings."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    strings = values.astype(str)
    if len(strings) == 0:
        return strings
    lengths = np.char.str_len(strings)
    if lengths.min() == 0 or lengths.max() > 19 or not np.char.isdigit(strings).all():
        return strings
    try:
        strings.astype(np.bytes_)  # isdigit also accepts '٣' and '²': ids are ASCII digits only
    except UnicodeEncodeError:
        return strings
    if lengths.max() > _DIGITS_MAX_LEN and any(int(s) > 2**63 - 1 for s in strings[lengths > _DIGITS_MAX_LEN]):
        return strings
    return strings.astype(np.int64)


def first_appearance_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, uniques)``: ``codes[i]`` numbers ``keys[i]`` by the order in which each distinct
    key first appears; ``uniques[c]`` is the key of code ``c``."""
    uniques, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], uniques[order]


def chronological_order(codes: np.ndarray, times: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Positions that sort the log by sequence, then time, then file order (the tie rule)."""
    if times is None:
        return np.lexsort((rows, codes))
    return np.lexsort((rows, times, codes))


def equal_time_ties(codes: np.ndarray, times: np.ndarray | None) -> int:
    """Adjacent interactions of one sequence with equal timestamps (log already ordered): the
    cases whose order only the file-order rule decides."""
    if times is None or len(codes) < 2:
        return 0
    return int(((codes[1:] == codes[:-1]) & (times[1:] == times[:-1])).sum())


def to_sequences(log: InteractionLog) -> SequenceDataset:
    """The log as one time-ordered sequence per key (ties in file order), items remapped densely.

    A log with no interactions is an error naming its file: every step before this one says
    what it removed, so the message can say that too.
    """
    where = log.source or log.name
    if len(log) == 0:
        raise DataFormatError(f"{where}: no interactions left to build sequences from")
    codes, keys = first_appearance_codes(log.keys)
    order = chronological_order(codes, log.times, log.rows)
    codes = codes[order]
    item_ids, remapped = np.unique(log.items[order], return_inverse=True)
    counts = np.bincount(codes, minlength=len(keys))
    behaviors, behavior_names = None, ()
    if log.behaviors is not None:  # codes in sorted order of the behaviour names
        names, codes_of = np.unique(log.behaviors[order], return_inverse=True)
        if len(names) > 127:
            raise DataFormatError(f"{where}: {len(names)} distinct behaviours; a behaviour column names a few "
                                  "(click, cart, buy), is it the right column?")
        behaviors, behavior_names = codes_of.reshape(-1).astype(np.int8), tuple(names.tolist())
    padding = np.array([-1 if item_ids.dtype.kind in "iu" else ""], dtype=item_ids.dtype)
    return SequenceDataset(
        items=(remapped.reshape(-1) + 1).astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        num_items=len(item_ids),
        user_ids=keys,  # what names each sequence: its session id, else its user id
        item_ids=np.concatenate([padding, item_ids]),
        name=log.name,
        source=log.source,
        times=None if log.times is None else log.times[order],
        behaviors=behaviors,
        behavior_names=behavior_names,
    )


def from_dataset(dataset: SequenceDataset) -> InteractionLog:
    """A sequence dataset as a log (original ids; line = position in the file's order), so that
    a sequence file goes through the same preprocessing steps as any other source."""
    lengths = dataset.lengths
    return InteractionLog(
        users=np.repeat(np.asarray(dataset.user_ids), lengths),
        items=np.asarray(dataset.item_ids)[dataset.items],
        rows=np.arange(len(dataset.items), dtype=np.int64),
        times=dataset.times,
        source=dataset.source,
        name=dataset.name,
    )
