"""The Taobao multi-behaviour purchase data in the EHCF preprocessing (Chen et al., AAAI 2020).

Three tab-separated files with a header line, as published in ``chenchongthu/EHCF/data/Taobao``:

* ``buy.train.txt`` (``uid  sid``): 211,022 purchases of 48,749 users, at least 3 per user;
* ``buy.test.txt`` (``uid  sid``): one held-out purchase per user, never one of the user's
  training purchases;
* ``cart.csv`` (``uid  sid  3``, tab-separated despite the name; the third column is the
  behaviour string ``cart``): 193,747 add-to-carts of 37,689 users.

Ids are already contiguous from 0 (39,493 items: the largest ``sid`` is 39,492, and every id
occurs in the purchase files), so they are kept as they are, unlike the 1-based remapping of the
sequence files: a row index here is the ``sid`` of the file and of EHCF's code, which makes the
numbers comparable line by line. EHCF counts items as the distinct ``sid`` values of
train + test (``get_count`` in ``code/EHCF.py``); here that equals ``max sid + 1``.

Parsing is strict because a silently skipped or mis-split row shifts every metric a little and
is then never found: a malformed row raises ``DataFormatError`` (a ``ValueError``) naming the
file, the line and the value; a file that is not UTF-8 text, likewise the file and the line. Repeated (user, item) pairs are dropped, and how many were dropped
is kept in ``MultiBehaviorData.duplicates`` (the published files have none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecomjax.data.files import INT32_MAX, open_text, parse_id, resolve_data_path
from ecomjax.errors import DataFormatError, InputError, MissingFileError

BUY_TRAIN = "buy.train.txt"
BUY_TEST = "buy.test.txt"
CART = "cart.csv"
DEFAULT_DIR = "taobao"  # under $ECOMJAX_DATA_DIR
TARGET_BEHAVIOR = "buy"  # what is predicted and evaluated; the other behaviours are auxiliary


@dataclass(frozen=True)
class Interactions:
    """(user, item) pairs of one behaviour, int32, deduplicated, sorted by user then item."""

    users: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class MultiBehaviorData:
    """Train behaviours (``buy``, ``cart``) and the test purchases over one id space."""

    num_users: int
    num_items: int
    train: dict[str, Interactions]  # behaviour -> training pairs; "buy" is the target behaviour
    test: Interactions  # buy.test: the purchases to predict
    duplicates: dict[str, int] = field(default_factory=dict)  # file -> repeated pairs dropped
    source: str = ""  # the directory read

    def counts(self) -> dict[str, int]:
        out = {"users": self.num_users, "items": self.num_items, "test_buy": len(self.test)}
        out.update({f"train_{name}": len(pairs) for name, pairs in self.train.items()})
        return out


def _read_pairs(path: Path, behaviour: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Parse one file; ``behaviour`` is the required third column (``cart.csv``) or None."""
    expected = 2 if behaviour is None else 3
    users: list[int] = []
    items: list[int] = []
    with open_text(path) as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        if len(header) != expected or header[:2] != ["uid", "sid"]:
            raise DataFormatError(f"{path}:1: header {header!r} is not uid<TAB>sid"
                                  + ("<TAB><behaviour>" if behaviour else ""))
        for number, line in enumerate(handle, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue  # a trailing blank line is harmless
            fields = line.split("\t")
            if len(fields) != expected:
                raise DataFormatError(f"{path}:{number}: expected {expected} tab-separated fields, "
                                      f"got {len(fields)}: {line!r}")
            for name, value, out in (("uid", fields[0], users), ("sid", fields[1], items)):
                # ASCII digits within int32: rejects '', '-1', '3.0', ' 7', '1_0', '٣', '6²'
                out.append(parse_id(value, f"{path}:{number}", name, high=INT32_MAX))
            if behaviour is not None and fields[2] != behaviour:
                raise DataFormatError(f"{path}:{number}: behaviour {fields[2]!r} is not {behaviour!r}")
    if not users:
        raise DataFormatError(f"{path}: no rows after the header")
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def _dedupe(users: np.ndarray, items: np.ndarray, num_items: int) -> tuple[Interactions, int]:
    keys = np.unique(users * num_items + items)
    pairs = Interactions((keys // num_items).astype(np.int32), (keys % num_items).astype(np.int32))
    return pairs, len(users) - len(keys)


def load_taobao(data_dir: str | Path | None = None) -> MultiBehaviorData:
    """Read ``buy.train.txt``, ``buy.test.txt`` and ``cart.csv`` from ``data_dir``.

    ``None`` reads ``$ECOMJAX_DATA_DIR/taobao``; a path that is not a directory as given is
    looked up under ``$ECOMJAX_DATA_DIR`` (``ecomjax.data.files``).
    """
    root = resolve_data_path(DEFAULT_DIR if data_dir is None else data_dir, directory=True)
    files = {"buy": (BUY_TRAIN, None), "test": (BUY_TEST, None), "cart": (CART, "cart")}
    raw = {}
    for key, (name, behaviour) in files.items():
        path = root / name
        if not path.is_file():
            raise MissingFileError(f"Taobao file {str(path)!r} not found (the loader reads {BUY_TRAIN}, "
                                    f"{BUY_TEST} and {CART} from the directory data.path names)")
        raw[key] = _read_pairs(path, behaviour)
    num_users = 1 + max(int(u.max()) for u, _ in raw.values())
    num_items = 1 + max(int(i.max()) for _, i in raw.values())
    duplicates = {}
    deduped = {}
    for key, (name, _) in files.items():
        deduped[key], duplicates[name] = _dedupe(*raw[key], num_items)
    return MultiBehaviorData(
        num_users=num_users,
        num_items=num_items,
        train={"buy": deduped["buy"], "cart": deduped["cart"]},
        test=deduped["test"],
        duplicates=duplicates,
        source=str(root),
    )


def padded_items(pairs: Interactions, num_users: int, pad: int, min_width: int = 1) -> np.ndarray:
    """``[num_users, max items per user]`` int32 item ids of each user, padded with ``pad``."""
    counts = np.bincount(pairs.users, minlength=num_users)
    width = max(int(counts.max(initial=0)), min_width)
    out = np.full((num_users, width), pad, dtype=np.int32)
    order = np.lexsort((pairs.items, pairs.users))
    users, items = pairs.users[order], pairs.items[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[users, np.arange(len(users)) - starts[users]] = items
    return out


@dataclass
class ValidationSplit:
    fit_buy: Interactions  # training purchases minus the held-out ones
    valid: Interactions  # one held-out training purchase per validation user


def split_validation(data: MultiBehaviorData, fraction: float, seed: int) -> ValidationSplit:
    """Hold out one random training purchase of ``fraction`` of the users (those with >= 3)."""
    rng = np.random.default_rng(seed)
    buy = data.train[TARGET_BEHAVIOR]
    order = np.argsort(buy.users, kind="stable")
    buy = Interactions(buy.users[order], buy.items[order])
    counts = np.bincount(buy.users, minlength=data.num_users)
    eligible = np.flatnonzero(counts >= 3)
    if len(eligible) == 0:
        raise InputError("no user has 3 training purchases to hold one out for validation")
    chosen = np.sort(rng.choice(eligible, size=max(1, round(fraction * len(eligible))), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = starts[chosen] + rng.integers(0, counts[chosen])
    keep = np.ones(len(buy), dtype=bool)
    keep[rows] = False
    return ValidationSplit(Interactions(buy.users[keep], buy.items[keep]),
                           Interactions(buy.users[rows], buy.items[rows]))
