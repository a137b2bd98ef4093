"""What a ranker's input looks like: categorical, numeric and sequence fields, and the labels.

One schema describes synthetic impressions, the Ali-CCP / AliExpress / Criteo files and anything
a user brings, so one model class and one training loop serve them all:

* a **categorical** field is one id per impression (user, item, category, position, ...), index 0
  reserved for "unknown / missing": ids unseen in training map there instead of failing;
* a **numeric** field is one float (already scaled: the loaders say how);
* a **sequence** field is a left-aligned, 0-padded list of ids per impression (the user's recent
  purchases' categories, say), pooled by the model; it may share the embedding table of a
  categorical field (``table``), so the history and the candidate live in one space.

Labels follow the purchase funnel: ``click`` for every impression, ``purchase`` only after a click,
``dwell`` (seconds) only after a click. ``ImpressionData.validate`` refuses data that breaks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecomjax.errors import InputError, UnknownKeyError


@dataclass(frozen=True)
class CategoricalField:
    name: str
    vocab_size: int  # ids in [0, vocab_size); 0 = unknown / missing


@dataclass(frozen=True)
class SequenceField:
    name: str
    vocab_size: int
    max_len: int
    table: str | None = None  # name of a categorical field whose embedding table it shares


@dataclass(frozen=True)
class FeatureSchema:
    categorical: tuple[CategoricalField, ...]
    numeric: tuple[str, ...] = ()
    sequences: tuple[SequenceField, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.categorical] + list(self.numeric) + [s.name for s in self.sequences]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"feature names used twice: {duplicates}")
        categorical = {f.name: f for f in self.categorical}
        for seq in self.sequences:
            if seq.table is not None:
                if seq.table not in categorical:
                    raise InputError(f"sequence field {seq.name!r} shares the table of {seq.table!r}, "
                                     f"which is not a categorical field ({sorted(categorical)})")
                if categorical[seq.table].vocab_size != seq.vocab_size:
                    raise InputError(f"sequence field {seq.name!r} has vocab {seq.vocab_size} but its "
                                     f"table {seq.table!r} has {categorical[seq.table].vocab_size}")

    @property
    def num_fields(self) -> int:
        """Field vectors the model sees: one per categorical, numeric and sequence field."""
        return len(self.categorical) + len(self.numeric) + len(self.sequences)

    def index(self, name: str) -> int:
        """Column of a categorical field in ``ImpressionData.categorical``."""
        for i, f in enumerate(self.categorical):
            if f.name == name:
                return i
        raise UnknownKeyError(f"no categorical field {name!r}; fields: {[f.name for f in self.categorical]}")

    def to_dict(self) -> dict:
        return {"categorical": [[f.name, f.vocab_size] for f in self.categorical],
                "numeric": list(self.numeric),
                "sequences": [[s.name, s.vocab_size, s.max_len, s.table] for s in self.sequences]}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSchema:
        return cls(tuple(CategoricalField(n, v) for n, v in d["categorical"]), tuple(d["numeric"]),
                   tuple(SequenceField(n, v, m, t) for n, v, m, t in d["sequences"]))


@dataclass
class ImpressionData:
    """Impressions as columns. ``groups`` are lists (requests) for NDCG; ``users`` for GAUC.

    ``truth`` holds the generator's probabilities on synthetic data (``p_click``, ``p_cvr``,
    ``dwell_mean``, ``would_buy`` and their position-free versions); it is empty for logs.
    """

    schema: FeatureSchema
    categorical: np.ndarray  # int32 [N, num categorical]
    numeric: np.ndarray  # float32 [N, num numeric]
    sequences: np.ndarray  # int32 [N, num sequences, max_len] (max over fields), 0-padded
    click: np.ndarray  # float32 [N] 0/1
    purchase: np.ndarray | None  # float32 [N] 0/1, or None when the source has no purchases
    dwell: np.ndarray | None  # float32 [N] seconds (0 where not clicked), or None
    users: np.ndarray  # int64 [N] (GAUC groups); -1 where unknown
    groups: np.ndarray  # int64 [N] request / list ids
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.click)

    def validate(self) -> ImpressionData:
        """Shapes, id ranges and the funnel (purchase and dwell only after a click)."""
        n, schema = len(self.click), self.schema
        if self.categorical.shape != (n, len(schema.categorical)):
            raise InputError(f"categorical columns {self.categorical.shape}, schema has "
                             f"{len(schema.categorical)} fields for {n} impressions")
        if self.numeric.shape != (n, len(schema.numeric)):
            raise InputError(f"numeric columns {self.numeric.shape}, schema has {len(schema.numeric)}")
        if not np.isfinite(self.numeric).all():
            col = int(np.flatnonzero(~np.isfinite(self.numeric).all(axis=0))[0])
            raise InputError(f"numeric field {schema.numeric[col]!r} has NaN or infinite values")
        for i, f in enumerate(schema.categorical):
            column = self.categorical[:, i]
            if n and (column.min() < 0 or column.max() >= f.vocab_size):
                raise InputError(f"field {f.name!r}: ids must be in [0, {f.vocab_size}), "
                                 f"found [{column.min()}, {column.max()}]")
        for i, s in enumerate(schema.sequences):
            column = self.sequences[:, i]
            if n and (column.min() < 0 or column.max() >= s.vocab_size):
                raise InputError(f"sequence {s.name!r}: ids must be in [0, {s.vocab_size}), "
                                 f"found [{column.min()}, {column.max()}]")
        if not set(np.unique(self.click)) <= {0.0, 1.0}:
            raise InputError("click labels must be 0 or 1")
        if self.purchase is not None:
            if not set(np.unique(self.purchase)) <= {0.0, 1.0}:
                raise InputError("purchase labels must be 0 or 1")
            bad = np.flatnonzero((self.purchase > 0) & (self.click == 0))
            if len(bad):
                raise InputError(f"{len(bad)} impressions have a purchase without a click (first: row "
                                 f"{bad[0]}): the funnel is click -> purchase")
        if self.dwell is not None:
            bad = np.flatnonzero((self.dwell > 0) & (self.click == 0))
            if len(bad):
                raise InputError(f"{len(bad)} impressions have dwell time without a click (first: row {bad[0]})")
            if (self.dwell[self.click > 0] <= 0).any():
                raise InputError("clicked impressions need a dwell time > 0 seconds")
        return self

    def take(self, rows: np.ndarray) -> ImpressionData:
        def pick(a):
            return None if a is None else a[rows]

        return ImpressionData(self.schema, self.categorical[rows], self.numeric[rows], self.sequences[rows],
                              self.click[rows], pick(self.purchase), pick(self.dwell), self.users[rows],
                              self.groups[rows], {k: v[rows] for k, v in self.truth.items()}, self.source)


def drop_fields(data: ImpressionData, names: list[str]) -> ImpressionData:
    """The same impressions without the named feature fields (feature ablations; a raw id
    field a model should not see). Users and requests stay available to the metrics. A name
    that is not a field, or a categorical field a kept sequence shares its table with, is an
    error."""
    schema = data.schema
    known = [f.name for f in schema.categorical] + list(schema.numeric) + [s.name for s in schema.sequences]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"data.drop_fields: no field(s) {unknown}; fields: {known}")
    keep_seq = [i for i, s in enumerate(schema.sequences) if s.name not in names]
    for i in keep_seq:
        if schema.sequences[i].table in names:
            raise InputError(f"data.drop_fields: {schema.sequences[i].table!r} holds the table of sequence "
                             f"{schema.sequences[i].name!r}; drop both or neither")
    keep_cat = [i for i, f in enumerate(schema.categorical) if f.name not in names]
    keep_num = [i for i, n in enumerate(schema.numeric) if n not in names]
    new_schema = FeatureSchema(tuple(schema.categorical[i] for i in keep_cat),
                               tuple(schema.numeric[i] for i in keep_num),
                               tuple(schema.sequences[i] for i in keep_seq))
    sequences = data.sequences[:, keep_seq] if keep_seq else np.zeros((len(data), 0, 1), np.int32)
    return ImpressionData(new_schema, data.categorical[:, keep_cat], data.numeric[:, keep_num], sequences,
                          data.click, data.purchase, data.dwell, data.users, data.groups, data.truth, data.source)


def split_by_group(data: ImpressionData, valid_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, np.ndarray]:
    """Row indices of train / valid / test, whole requests on one side (a list is ranked as a
    whole, and its impressions share the user's context)."""
    groups = np.unique(data.groups)
    rng = np.random.default_rng(seed)
    u = rng.random(len(groups))
    side = np.where(u < test_fraction, 2, np.where(u < test_fraction + valid_fraction, 1, 0))
    row_side = side[np.searchsorted(groups, data.groups)]
    return {name: np.flatnonzero(row_side == i) for i, name in enumerate(("train", "valid", "test"))}
