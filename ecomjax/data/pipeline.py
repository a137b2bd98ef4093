"""grain input pipelines for next-item training and leave-one-out evaluation.

Training packs several users' sequences into each row of ``max_len`` tokens (segment ids keep
them apart in attention and recurrence) and trains on every position of every sequence at
once. Amazon-style data has a median of six items per user, so a padded ``[B, 50]`` batch
would be about 85% padding, and the full-catalogue softmax would be paid on every padded
slot; packed rows are nearly full, and one static shape means one compilation.

Everything about an epoch is a pure function of ``(seed, epoch)``: the order of users, the
packing, and so the batch at any step. Resuming at step ``k`` of an epoch is therefore
``batches(epoch)[k:]``, exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import grain
import numpy as np

from ecomjax.data.split import EvalSplit, SequenceSplit
from ecomjax.errors import InputError

BATCH_KEYS = ("items", "targets", "segments", "positions")


def pack_rows(lengths: np.ndarray, order: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedily pack sequences of ``lengths`` (taken in ``order``) into rows of ``max_len``.

    Returns ``(row, column)`` of each sequence's first token, indexed like ``lengths``;
    sequences of length 0 get row -1. First-fit in the given order: rows stay in shuffled order
    and a row closes as soon as the next sequence does not fit.
    """
    row_of = np.full(len(lengths), -1, dtype=np.int64)
    col_of = np.zeros(len(lengths), dtype=np.int64)
    row, col = 0, 0
    for index in order:
        size = int(lengths[index])
        if size == 0:
            continue
        if col + size > max_len:
            row, col = row + 1, 0
        row_of[index], col_of[index] = row, col
        col += size
    return row_of, col_of


@dataclass
class NextItemTrainData:
    """Packed training rows of a leave-one-out split; one epoch = every training position once."""

    split: SequenceSplit
    max_len: int
    batch_size: int
    seed: int

    @cached_property
    def _token_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Per user: index of the first input token in ``dataset.items`` and the token count."""
        start = self.split.dataset.offsets[:-1]
        train_len = self.split.train_end - start
        count = np.clip(train_len - 1, 0, self.max_len)  # m items give m-1 (input, target) pairs
        first = self.split.train_end - 1 - count
        return first, count

    @property
    def num_tokens(self) -> int:
        return int(self._token_spans[1].sum())

    def _packing(self, epoch: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Row and column of each user's first token this epoch, and the padded row count."""
        count = self._token_spans[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(count))
        row_of, col_of = pack_rows(count, order, self.max_len)
        num_rows = int(row_of.max()) + 1 if count.sum() else 0
        return row_of, col_of, -(-num_rows // self.batch_size) * self.batch_size

    def epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        """All packed rows of one epoch, ``[rows, max_len]`` per key, padded to whole batches."""
        first, count = self._token_spans
        row_of, col_of, num_rows = self._packing(epoch)
        used = np.flatnonzero(count > 0)
        n = count[used]
        token_user = np.repeat(used, n)
        within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        flat = row_of[token_user] * self.max_len + col_of[token_user] + within
        source = first[token_user] + within
        # Segment id = rank of the sequence inside its row (1-based), so equal ids mean same user.
        seg_rank = np.zeros(len(count), dtype=np.int64)
        by_slot = used[np.lexsort((col_of[used], row_of[used]))]
        row_sorted = row_of[by_slot]
        starts = np.r_[0, np.flatnonzero(np.diff(row_sorted)) + 1]
        rank = np.arange(len(by_slot)) - np.repeat(starts, np.diff(np.r_[starts, len(by_slot)]))
        seg_rank[by_slot] = rank + 1
        items = self.split.dataset.items
        rows = {key: np.zeros(num_rows * self.max_len, dtype=np.int32) for key in BATCH_KEYS}
        rows["items"][flat] = items[source]
        rows["targets"][flat] = items[source + 1]
        rows["segments"][flat] = seg_rank[token_user]
        rows["positions"][flat] = np.repeat(n, n) - 1 - within  # distance from the sequence end
        return {key: value.reshape(num_rows, self.max_len) for key, value in rows.items()}

    def batches(self, epoch: int, rows: slice | None = None) -> grain.MapDataset:
        """A grain dataset of this epoch's batches; ``ds[k]`` is step ``k`` (random access).

        ``rows`` selects the rows of every batch this process feeds (multi-process data
        parallelism: process ``p`` owns a fixed block of each global batch); default all.
        """
        epoch_rows = self.epoch_rows(epoch)
        num_batches = len(epoch_rows["items"]) // self.batch_size
        bs = self.batch_size
        lo, hi, _ = (rows or slice(None)).indices(bs)

        def batch(step: int) -> dict[str, np.ndarray]:
            return {key: value[step * bs + lo : step * bs + hi] for key, value in epoch_rows.items()}

        return grain.MapDataset.range(num_batches).map(batch)

    def steps_in_epoch(self, epoch: int) -> int:
        return self._packing(epoch)[2] // self.batch_size


@dataclass(frozen=True)
class EvalBatch:
    """Fixed-shape arrays for ranking one split; padded users have ``valid == False``."""

    items: np.ndarray  # int32 [U, max_len] right-aligned model input
    positions: np.ndarray  # int32 [U, max_len] distance from the end (0 = last input item)
    segments: np.ndarray  # int32 [U, max_len] 1 on real tokens
    history: np.ndarray  # int32 [U, H] every earlier item (for exclusion), 0-padded
    targets: np.ndarray  # int32 [U]
    negatives: np.ndarray  # int32 [U, S] sampled-protocol negatives (S may be 0)
    valid: np.ndarray  # bool [U]


def eval_arrays(
    split: SequenceSplit,
    which: EvalSplit,
    max_len: int,
    batch_size: int,
    num_negatives: int = 0,
    seed: int = 0,
) -> EvalBatch:
    """Model inputs, histories and targets for every evaluated user, padded to whole batches."""
    dataset = split.dataset
    start = dataset.offsets[which.users]
    hist_len = which.history_end - start
    num = -(-len(which.users) // batch_size) * batch_size
    width = int(hist_len.max())
    history = np.zeros((num, width), dtype=np.int32)
    col = np.arange(width)
    mask = col[None, :] < hist_len[:, None]
    history[: len(which.users)][mask] = dataset.items[(start[:, None] + col[None, :])[mask]]
    # Right-aligned input window: the last max_len history items end at column max_len - 1.
    take = np.minimum(hist_len, max_len)
    items = np.zeros((num, max_len), dtype=np.int32)
    in_col = np.arange(max_len)
    in_mask = in_col[None, :] >= (max_len - take)[:, None]
    src = which.history_end[:, None] - max_len + in_col[None, :]
    items[: len(which.users)][in_mask] = dataset.items[src[in_mask]]
    positions = np.broadcast_to(max_len - 1 - in_col, (num, max_len)).astype(np.int32)
    segments = (items > 0).astype(np.int32)
    targets = np.zeros(num, dtype=np.int32)
    targets[: len(which.users)] = which.targets
    valid = np.zeros(num, dtype=bool)
    valid[: len(which.users)] = True
    negatives = sample_negatives(history, targets, dataset.num_items, num_negatives, seed)
    return EvalBatch(items, positions * segments, segments, history, targets, negatives, valid)


def _bucket(width: int, cap: int) -> int:
    """Smallest power of two >= ``width`` (at least 8), capped at ``cap``."""
    return min(cap, max(8, 1 << (max(width, 1) - 1).bit_length()))


def eval_batches(arrays: EvalBatch, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Cut ``arrays`` into batches of users of similar history length, each only as wide as needed.

    Evaluation encodes one right-aligned window per user, and most users of sparse datasets
    have far fewer items than ``max_len`` (Beauty: median 6 of 50): users sorted by length
    share a window width from a few powers of two, which cuts the encoder's work several-fold
    for a handful of extra compilations. Metric sums do not depend on the order of users.
    """
    max_len = arrays.items.shape[1]
    real = np.flatnonzero(arrays.valid)
    lengths = (arrays.items[real] > 0).sum(axis=1)
    sort = np.argsort(lengths, kind="stable")
    order, sorted_lengths = real[sort], lengths[sort]
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        pad = batch_size - len(idx)
        width = _bucket(int(sorted_lengths[start + len(idx) - 1]), max_len)  # longest: sorted last
        hist_width = _bucket(int((arrays.history[idx] > 0).sum(axis=1).max()), arrays.history.shape[1])
        take = np.concatenate([idx, np.full(pad, idx[0])])
        batch = {
            "items": arrays.items[take, max_len - width :],
            "positions": arrays.positions[take, max_len - width :],
            "segments": arrays.segments[take, max_len - width :],
            "history": arrays.history[take, :hist_width],
            "targets": arrays.targets[take],
            "negatives": arrays.negatives[take],
            "valid": np.concatenate([np.ones(len(idx), bool), np.zeros(pad, bool)]),
        }
        batches.append(batch)
    return batches


def sample_negatives(
    history: np.ndarray, targets: np.ndarray, num_items: int, count: int, seed: int
) -> np.ndarray:
    """``count`` distinct uniform items per user, none in the user's history or the target.

    The sampled protocol of the SASRec / S3-Rec papers; kept only for comparison with them.
    """
    out = np.zeros((len(targets), count), dtype=np.int32)
    if count == 0:
        return out
    rng = np.random.default_rng([seed, 7919])
    for u in range(len(targets)):
        if targets[u] == 0:
            continue
        seen = set(history[u][history[u] > 0].tolist())
        seen.add(int(targets[u]))
        if num_items - len(seen) < count:
            raise InputError(
                f"eval.sampled_negatives={count}: user row {u} has only "
                f"{num_items - len(seen)} unseen items to sample from"
            )
        chosen: list[int] = []
        while len(chosen) < count:
            for item in rng.integers(1, num_items + 1, size=2 * count).tolist():
                if item not in seen:
                    seen.add(item)
                    chosen.append(item)
                    if len(chosen) == count:
                        break
        out[u] = chosen
    return out
