"""Data sources, splits and input pipelines."""

from __future__ import annotations

from ecomjax.config import DataConfig
from ecomjax.data.files import DataFormatError, resolve_data_path
from ecomjax.data.sequences import SequenceDataset, read_sequence_file
from ecomjax.data.synthetic import generate_shop


def load_sequences(config: DataConfig) -> SequenceDataset:
    """The interaction sequences a config names: the synthetic shop or a sequence file."""
    if config.source == "synthetic":
        if config.path is not None:
            raise ValueError("data.path is set but data.source is 'synthetic'; set data.source=sequences")
        return generate_shop(config.synthetic).dataset
    if config.path is None:
        raise ValueError("data.source=sequences needs data.path (a 'user item item ...' file)")
    return read_sequence_file(resolve_data_path(config.path))


__all__ = [
    "DataFormatError",
    "SequenceDataset",
    "generate_shop",
    "load_sequences",
    "read_sequence_file",
    "resolve_data_path",
]
