"""Data sources, splits and input pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ecomjax.config import AT_LEAST_1, Check
from ecomjax.data.files import resolve_data_path
from ecomjax.data.sequences import SequenceDataset, read_sequence_file
from ecomjax.data.synthetic import SyntheticConfig, generate_shop
from ecomjax.errors import DataFormatError, InputError


@dataclass
class DataConfig:
    """Where interaction sequences come from and how they become model inputs."""

    source: Literal["synthetic", "sequences"] = "synthetic"  # sequences = `user item item ...` file
    path: str | None = None  # file for source=sequences; relative paths also tried under $ECOMJAX_DATA_DIR
    max_len: int = 50  # most recent items a model sees; longer histories are truncated on the left
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    RANGES: ClassVar[dict[str, Check]] = {"max_len": AT_LEAST_1}


def load_sequences(config: DataConfig) -> SequenceDataset:
    """The interaction sequences a config names: the synthetic shop or a sequence file."""
    if config.source == "synthetic":
        if config.path is not None:
            raise InputError("data.path is set but data.source is 'synthetic'; set data.source=sequences")
        return generate_shop(config.synthetic).dataset
    if config.path is None:
        raise InputError("data.source=sequences needs data.path (a 'user item item ...' file)")
    return read_sequence_file(resolve_data_path(config.path))


__all__ = [
    "DataConfig",
    "DataFormatError",
    "SequenceDataset",
    "generate_shop",
    "load_sequences",
    "read_sequence_file",
    "resolve_data_path",
]
