"""Where a recommender's interaction sequences come from: the ``data`` section of a next-item run.

``data.source: synthetic`` (the default) is the built-in shop; ``data.source: file`` reads
``data.path`` in ``data.format`` (``log_readers``), with ``data.columns`` naming the columns of a
log, then runs the cleaning steps of ``data.preprocess`` and builds time-ordered sequences
(``preprocess``, ``interactions``). What came in and what each step left is the dataset's
``report``, which a run writes as ``data_report.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar, Literal

from ecomjax.config import AT_LEAST_1, Check
from ecomjax.data.files import resolve_data_path
from ecomjax.data.interactions import to_sequences
from ecomjax.data.log_readers import ColumnMap, read_log
from ecomjax.data.preprocess import PreprocessConfig, preprocess
from ecomjax.data.sequences import SequenceDataset, read_sequence_file
from ecomjax.data.shard_pipeline import load_shards, read_manifest
from ecomjax.data.split import SplitConfig
from ecomjax.data.synthetic import SyntheticConfig, generate_shop
from ecomjax.errors import InputError


@dataclass
class ColumnsConfig:
    """Column of each role in a delimited / Parquet / RecBole log (null: the format's default;
    a header-less file names columns by their 0-based position: 0, 1, ...)."""

    user: str | int | None = None  # default "user" (recbole: "user_id"; header-less: "0")
    item: str | int | None = None  # default "item" (recbole: "item_id"; header-less: "1")
    time: str | int | None = None  # timestamps: numbers, or ISO dates / date-times (recbole: "timestamp" if present)
    rating: str | int | None = None  # explicit ratings, for preprocess.min_rating (recbole: "rating" if present)
    behavior: str | int | None = None  # click / cart / buy ...
    session: str | int | None = None  # session ids: sequences are then sessions, not users

    def is_default(self) -> bool:
        return all(getattr(self, role) is None for role in ("user", "item", "time", "rating", "behavior", "session"))


@dataclass
class DataConfig:
    """Where interaction sequences come from and how they become model inputs."""

    source: Literal["synthetic", "file"] = "synthetic"  # file = data.path in data.format
    path: str | None = None  # the file (or Parquet directory); relative paths also tried under $ECOMJAX_DATA_DIR
    # sequences: 'user item item ...'; shards: a directory made by `ecomjax data prepare`
    format: Literal["sequences", "pairs", "delimited", "parquet", "recbole", "shards"] = "sequences"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    delimiter: str = ","  # delimited logs: one character ("\t" for TSV)
    header: bool = True  # delimited logs: the first line names the columns
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    max_len: int = 50  # most recent items a model sees; longer histories are truncated on the left
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    RANGES: ClassVar[dict[str, Check]] = {"max_len": AT_LEAST_1}


def load_sequences(config: DataConfig) -> SequenceDataset:
    """The interaction sequences a config names, with their ``report`` (data_report.json)."""
    if config.source == "synthetic":
        if config.path is not None:
            raise InputError("data.path is set but data.source is 'synthetic'; set data.source=file")
        dataset = generate_shop(config.synthetic).dataset
        return replace(dataset, report=_plain_report("synthetic shop", dataset))
    if config.path is None:
        raise InputError(f"data.source=file needs data.path (a {config.format} file)")
    return read_interaction_sequences(config)


def read_interaction_sequences(config) -> SequenceDataset:
    """``config.path`` read in ``config.format`` with ``columns`` / ``delimiter`` / ``header``, then
    cleaned by ``preprocess`` into time-ordered sequences; any data section with those fields
    (the next-item one, the multi-behaviour one) reads its logs through here."""
    if not config.columns.is_default() and config.format in ("sequences", "pairs"):
        raise InputError(f"data.columns applies to delimited, parquet and recbole logs, not data.format={config.format}")
    directory = config.format == "shards" or (config.format == "parquet" and _is_directory(config.path))
    path = resolve_data_path(config.path, directory=directory)
    steps = config.preprocess
    if config.format == "shards":
        prepared = read_manifest(path).get("preprocess")
        if steps != PreprocessConfig() and asdict(steps) != prepared:
            raise InputError(f"data.preprocess: the shards in {path} were cleaned with other steps when prepared "
                             f"({prepared}); prepare them again to change the steps")
        return load_shards(path)
    if config.format == "sequences" and steps == PreprocessConfig():
        dataset = read_sequence_file(path)  # the prepared file as written: nothing to clean or order
        return replace(dataset, report=_plain_report(str(path), dataset))
    log = read_log(path, config.format, _column_map(config), delimiter=config.delimiter, header=config.header)
    log, report = preprocess(log, steps)
    dataset = to_sequences(log)
    return replace(dataset, report={**report, "format": config.format, "final": _counts(dataset)})


def prepare_out_of_core(config: DataConfig, out: str, *, bucket_bytes: int, engine: str = "local",
                        beam_args: list[str] | None = None) -> dict:
    """``ecomjax data prepare``: the log of ``config`` cleaned into shards under ``out`` (``shards``),
    here or as Apache Beam pipelines (``beam_pipeline``): the same shards either way."""
    from ecomjax.data.shards import prepare_shards

    if config.source != "file" or config.format not in ("delimited", "parquet"):
        raise InputError("ecomjax data prepare reads a delimited or parquet log: set data.source=file and "
                         f"data.format (now {config.source!r} / {config.format!r})")
    if config.path is None:
        raise InputError("ecomjax data prepare needs data.path")
    path = resolve_data_path(config.path, directory=config.format == "parquet" and _is_directory(config.path))
    if engine == "beam":
        if config.format != "delimited":
            raise InputError("the Beam engine reads delimited logs (data.format=delimited)")
        try:
            import apache_beam  # noqa: F401
        except ImportError as error:
            raise InputError(f"--engine beam needs Apache Beam ({error}); pip install 'ecomjax[beam]' in an "
                             "environment of its own") from None
        from ecomjax.data.beam_pipeline import prepare_shards_beam

        return prepare_shards_beam(path, out, _column_map(config), config.preprocess, delimiter=config.delimiter,
                                   header=config.header, bucket_bytes=bucket_bytes, beam_args=beam_args)
    return prepare_shards(path, out, _column_map(config), config.preprocess, fmt=config.format,
                          delimiter=config.delimiter, header=config.header, bucket_bytes=bucket_bytes)


def _is_directory(path: str) -> bool:
    try:
        resolve_data_path(path, directory=True)
    except FileNotFoundError:
        return False
    return True


def _column_map(config: DataConfig) -> ColumnMap | None:
    columns = config.columns
    if config.format not in ("delimited", "parquet", "recbole") or (columns.is_default() and config.format == "recbole"):
        return None
    header_less = config.format == "delimited" and not config.header
    user = columns.user if columns.user is not None else (None if columns.session is not None else
                                                          ("0" if header_less else "user_id" if config.format == "recbole" else "user"))
    item = columns.item if columns.item is not None else ("1" if header_less else "item_id" if config.format == "recbole" else "item")
    def name(column):
        return None if column is None else str(column)

    return ColumnMap(name(user), name(item), name(columns.time), name(columns.rating), name(columns.behavior),
                     name(columns.session))


def _counts(dataset: SequenceDataset) -> dict:
    return {"interactions": len(dataset.items), "sequences": dataset.num_users, "items": dataset.num_items}


def _plain_report(source: str, dataset: SequenceDataset) -> dict:
    return {"source": source, "steps": [{"step": "read", **_counts(dataset)}], "time_range": None,
            "tie_rule": "sequences as written (no timestamps)", "sequences_are": "users", "final": _counts(dataset)}
