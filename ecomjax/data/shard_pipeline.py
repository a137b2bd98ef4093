"""Reading prepared sequence shards (``shards``): all at once, or streamed per process with grain.

A training process of a multi-process run reads only its own shards
(``shards[process_index::process_count]``); within a shard, sequences are split leave-one-out
and packed into rows exactly as the in-memory pipeline packs them (``NextItemTrainData``), so a
shard streamed through grain gives the batches the in-memory path gives the same sequences.
Only one shard is in host memory at a time (plus grain's prefetch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ecomjax.data.interactions import ids_from_strings
from ecomjax.data.sequences import SequenceDataset
from ecomjax.errors import DataFormatError, MissingFileError


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    try:
        return json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{directory}: no manifest.json; prepare the log first "
                               "(ecomjax data prepare CONFIG OUT)") from None
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{directory / 'manifest.json'}: not valid JSON ({error})") from None


def read_shard(directory: Path, name: str, item_ids: np.ndarray) -> SequenceDataset:
    """One shard as a sequence dataset over the global item ids."""
    file = directory / name
    try:
        table = pq.read_table(file)
    except (OSError, ValueError) as error:
        raise DataFormatError(f"{file}: cannot be read as a shard ({error})") from None
    items = table.column("items").combine_chunks()
    lengths = np.diff(items.offsets.to_numpy())
    times = None
    if "times" in table.column_names:
        times = table.column("times").combine_chunks().values.to_numpy().astype(np.float64)
    return SequenceDataset(items=items.values.to_numpy().astype(np.int32),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           num_items=len(item_ids) - 1,
                           user_ids=ids_from_strings(table.column("sequence").to_numpy(zero_copy_only=False)),
                           item_ids=item_ids, name=directory.name, source=str(file), times=times)


def load_shards(directory: str | Path) -> SequenceDataset:
    """Every shard of a prepared directory as one dataset (shards in order)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    item_ids = np.load(directory / "item_ids.npy")
    parts = [read_shard(directory, name, item_ids) for name in manifest["shards"]]
    parts = [p for p in parts if p.num_users]
    lengths = np.concatenate([p.lengths for p in parts])
    report = json.loads((directory / "data_report.json").read_text())
    times = None if parts[0].times is None else np.concatenate([p.times for p in parts])
    return SequenceDataset(items=np.concatenate([p.items for p in parts]),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           num_items=len(item_ids) - 1,
                           user_ids=ids_from_strings(np.concatenate([p.user_ids.astype(str) for p in parts])),
                           item_ids=item_ids, name=directory.name, source=str(directory), times=times, report=report)


class _PackShard:
    """Shard name -> its packed training batches for one epoch (leave-one-out training part); a
    grain flat-map transform (``flat_map`` and ``max_fan_out`` are its whole interface)."""

    def __init__(self, directory: Path, item_ids: np.ndarray, max_len: int, batch_size: int, seed: int,
                 epoch: int, max_fan_out: int):
        self.directory, self.item_ids = directory, item_ids
        self.max_len, self.batch_size, self.seed, self.epoch = max_len, batch_size, seed, epoch
        self.max_fan_out = max_fan_out

    def flat_map(self, name: str) -> list[dict[str, np.ndarray]]:
        from ecomjax.data.pipeline import NextItemTrainData
        from ecomjax.data.split import leave_one_out

        dataset = read_shard(self.directory, name, self.item_ids)
        if dataset.num_users == 0:
            return []
        train = NextItemTrainData(leave_one_out(dataset), self.max_len, self.batch_size, self.seed)
        rows = train.epoch_rows(self.epoch)
        bs = self.batch_size
        return [{k: v[i * bs:(i + 1) * bs] for k, v in rows.items()} for i in range(len(rows["items"]) // bs)]


def streamed_train_batches(directory: str | Path, *, max_len: int, batch_size: int, seed: int, epoch: int,
                           process_index: int = 0, process_count: int = 1):
    """This process's training batches of one epoch (a ``grain.IterDataset``): its shards in a
    seeded order, each packed."""
    import grain  # here, so that reading shards needs no grain (the Beam workers read them too)
    directory = Path(directory)
    manifest = read_manifest(directory)
    mine = manifest["shards"][process_index::process_count]
    item_ids = np.load(directory / "item_ids.npy")
    fan_out = manifest["interactions"] // batch_size + 1  # a bound: a row holds at least one position
    shards = grain.MapDataset.source(mine).shuffle(seed=seed + epoch).to_iter_dataset()
    return grain.experimental.FlatMapIterDataset(
        shards, _PackShard(directory, item_ids, max_len, batch_size, seed, epoch, fan_out))
