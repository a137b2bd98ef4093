"""A timestamped behaviour log (click / cart / buy rows) as multi-behaviour training data.

The multi-behaviour recommender was fitted to the EHCF Taobao files, which arrive already split.
A log is split here the way those files were made, but in time: each user's **test purchase**
is their last purchase of an item they had not bought before (the ranking excludes earlier
purchases, so a re-purchase could never be found), and training holds every interaction of
every behaviour **strictly before it** in the user's time order: nothing the user did after the
test purchase, carts included, is trained on. Users with no such purchase are training data only
(counted). Validation then holds out training purchases as for the Taobao files.

``behavior_values`` maps each modelled behaviour to its value in the log (Taobao's UserBehavior
log says ``buy`` / ``cart`` / ``pv`` / ``fav``); rows of other behaviours are dropped and
counted in the report, never silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecomjax.data.sequences import SequenceDataset
from ecomjax.data.taobao import TARGET_BEHAVIOR, Interactions, MultiBehaviorData, _dedupe
from ecomjax.errors import DataFormatError, InputError


def multi_behavior_from_sequences(dataset: SequenceDataset, behavior_values: dict[str, str]) -> tuple[
        MultiBehaviorData, dict[str, Any]]:
    """Train pairs per behaviour and one test purchase per user (module doc), over dense ids
    (users = sequences 0..U-1, items = dataset ids - 1, so 0..N-1)."""
    where = dataset.source or dataset.name
    if dataset.behaviors is None:
        raise InputError(f"{where}: the multi-behaviour task needs a behaviour column (data.columns.behavior)")
    if TARGET_BEHAVIOR not in behavior_values:
        raise InputError(f"data.behavior_values must map {TARGET_BEHAVIOR!r} (the predicted behaviour) to its "
                         "value in the log")
    names = np.asarray(dataset.behavior_names)
    code_of = {value: model for model, value in behavior_values.items()}
    modelled = np.array([code_of.get(str(n), "") for n in names])[dataset.behaviors]
    users = np.repeat(np.arange(dataset.num_users), dataset.lengths)
    items = dataset.items.astype(np.int64) - 1
    position = np.arange(len(items))
    is_buy = modelled == TARGET_BEHAVIOR
    # the test purchase: the user's last buy whose item the user did not buy earlier
    earlier_buy = _seen_before(users, items, is_buy)
    candidate = is_buy & ~earlier_buy
    last = np.full(dataset.num_users, -1, dtype=np.int64)
    np.maximum.at(last, users[candidate], position[candidate])
    has_test = last >= 0
    cutoff = np.where(has_test, last, np.iinfo(np.int64).max)[users]
    in_train = position < cutoff
    train = {}
    for behavior in behavior_values:
        rows = in_train & (modelled == behavior)
        train[behavior] = _dedupe(users[rows], items[rows], dataset.num_items)[0]
    if len(train[TARGET_BEHAVIOR]) == 0:
        raise DataFormatError(f"{where}: no training purchases ({TARGET_BEHAVIOR!r} rows before a test purchase)")
    test_users = np.flatnonzero(has_test)
    test = Interactions(test_users.astype(np.int32), items[last[test_users]].astype(np.int32))
    data = MultiBehaviorData(num_users=dataset.num_users, num_items=dataset.num_items, train=train, test=test,
                             duplicates={b: int(((modelled == b) & in_train).sum()) - len(train[b]) for b in train},
                             source=where)
    dropped = {str(n): int((names[dataset.behaviors] == n).sum()) for n in names if str(n) not in code_of}
    report = {"split": "per user: last purchase of a new item = test; every behaviour strictly before it = train",
              "users_without_test_purchase": int((~has_test).sum()), "rows_of_unmodelled_behaviours": dropped,
              "after_test_purchase_not_trained": int((~in_train).sum() - has_test.sum())}
    return data, report


def _seen_before(users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per position: did the same user do a ``mask`` interaction with the same item earlier?"""
    out = np.zeros(len(users), dtype=bool)
    rows = np.flatnonzero(mask)
    key = users[rows] * (items.max(initial=0) + 1) + items[rows]
    order = np.lexsort((rows, key))
    repeat = np.r_[False, key[order][1:] == key[order][:-1]]
    out[rows[order[repeat]]] = True
    return out

