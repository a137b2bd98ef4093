"""Data sources, splits and input pipelines."""

from __future__ import annotations

from ecomjax.data.files import resolve_data_path
from ecomjax.data.sequences import SequenceDataset, read_sequence_file
from ecomjax.data.source import ColumnsConfig, DataConfig, load_sequences
from ecomjax.data.synthetic import generate_shop
from ecomjax.errors import DataFormatError

__all__ = [
    "ColumnsConfig",
    "DataConfig",
    "DataFormatError",
    "SequenceDataset",
    "generate_shop",
    "load_sequences",
    "read_sequence_file",
    "resolve_data_path",
]
