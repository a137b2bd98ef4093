"""Recommendations from a trained next-item model: a history of original item ids in, the top
``k`` original item ids and their scores out.

The input is built exactly as evaluation builds it (``ecomjax.data.pipeline.eval_arrays``): the
last ``max_len`` items right-aligned, positions counted from the end; with ``exclude_history``
every item of the history (not only the window) is ranked out, and the padding id and the
table's padding rows never appear. So a user's top-10 here is the top-10 the evaluation ranked
for the same history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError, NonFiniteError, UnknownKeyError
from ecomjax.eval.ranking import full_ranking_scores


@dataclass(frozen=True)
class Recommendations:
    item_ids: np.ndarray  # [k] original item ids, best first
    scores: np.ndarray  # [k] float32 model scores


def _scores(graphdef, state, items, positions, segments, history, exclude: bool):
    model = nnx.merge(graphdef, state)
    hidden = model.encode(items, positions, segments, deterministic=True)[:, -1]
    return full_ranking_scores(model.catalogue_scores(hidden), history if exclude else None, model.num_items)


_all_scores = jax.jit(_scores, static_argnames=("graphdef", "exclude"))


@partial(jax.jit, static_argnames=("graphdef", "k", "exclude"))
def _top_k(graphdef, state, items, positions, segments, history, *, k: int, exclude: bool):
    return jax.lax.top_k(_scores(graphdef, state, items, positions, segments, history, exclude), k)


class Recommender:
    """``recommend(history, k, exclude_history)`` over a sequential model's whole catalogue."""

    def __init__(self, model: nnx.Module, item_ids: np.ndarray, max_len: int):
        self.graphdef, self.state = nnx.split(model)
        self.item_ids = np.asarray(item_ids)  # dense id -> original id; index 0 is padding
        self.max_len = max_len
        self.num_items = len(self.item_ids) - 1
        self.index = {str(item): dense for dense, item in enumerate(self.item_ids) if dense > 0}

    def dense_ids(self, history: Sequence) -> np.ndarray:
        """Original ids -> dense ids; an unknown id is an error naming it."""
        unknown = [h for h in history if str(h) not in self.index]
        if unknown:
            raise UnknownKeyError(f"items unknown to the recommender: {unknown[:5]} (it knows {self.num_items} items)")
        return np.asarray([self.index[str(h)] for h in history], np.int32)

    def recommend(self, history: Sequence, k: int = 10, exclude_history: bool = True) -> Recommendations:
        """The ``k`` best items after ``history`` (original ids, oldest first)."""
        if len(history) == 0:
            raise InputError("empty history: a sequential recommender needs at least one item")
        if not 1 <= k <= self.num_items:
            raise InputError(f"k={k} must be in [1, {self.num_items}]")
        scores, top = _top_k(self.graphdef, self.state, *self._inputs(history), k=k, exclude=exclude_history)
        scores = np.asarray(scores)[0]
        if np.isnan(scores).any() or np.isposinf(scores).any():  # top_k would rank NaN first
            raise NonFiniteError("the model scores this history NaN or infinite: its parameters are not finite "
                                 "(a corrupt checkpoint, or training that diverged); no recommendations")
        return Recommendations(self.item_ids[np.asarray(top)[0]], scores)

    def scores(self, history: Sequence) -> np.ndarray:
        """``[num_items + 1]`` next-item scores by dense id (index 0 -inf), history not excluded."""
        if len(history) == 0:
            raise InputError("empty history: a sequential recommender needs at least one item")
        scores = _all_scores(self.graphdef, self.state, *self._inputs(history), exclude=False)
        return np.asarray(scores)[0, : self.num_items + 1]

    def _inputs(self, history: Sequence) -> tuple[jax.Array, ...]:
        """(items, positions, segments, history) as evaluation builds them for one user."""
        dense = self.dense_ids(history)
        window = dense[-self.max_len:]
        items = np.zeros((1, self.max_len), np.int32)
        items[0, self.max_len - len(window):] = window
        segments = (items > 0).astype(np.int32)
        positions = (self.max_len - 1 - np.arange(self.max_len))[None, :].astype(np.int32) * segments
        width = 1 << max(len(dense) - 1, 0).bit_length()  # a few history widths: a few compilations
        past = np.zeros((1, width), np.int32)
        past[0, :len(dense)] = dense
        return tuple(jnp.asarray(a) for a in (items, positions, segments, past))
