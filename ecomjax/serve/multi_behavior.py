"""Recommendations for a known user from a trained multi-behaviour recommender.

The model scores every item for a user id from the user's embedding (plus, with history
pooling, the mean of the items the user bought or carted in training) and adds the learned
bonus on the user's carted items; the user's training purchases are ranked out, as evaluation
does. Which items those are comes from the run's ``vocab.npz`` (CSR lists per behaviour), so a
loaded run needs no data file.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.data.taobao import TARGET_BEHAVIOR
from ecomjax.errors import InputError, UnknownKeyError
from ecomjax.serve.recommend import Recommendations


class UserRecommender:
    def __init__(self, model: nnx.Module, vocab: Mapping[str, np.ndarray]):
        self.graphdef, self.state = nnx.split(model)
        self.model = model
        self.vocab = vocab
        self.num_users, self.num_items = model.num_users, model.num_items
        self._scores = jax.jit(self._user_scores)
        # a run trained on a behaviour log speaks the log's ids; the EHCF files' ids are the dense ones
        self.user_ids = vocab.get("user_ids")
        self.item_ids = vocab.get("item_ids")
        self.user_index = None if self.user_ids is None else {str(u): i for i, u in enumerate(self.user_ids)}

    def items_of(self, behavior: str, user: int) -> np.ndarray:
        offsets, items = self.vocab[f"{behavior}_offsets"], self.vocab[f"{behavior}_items"]
        return items[offsets[user]:offsets[user + 1]]

    def _user_scores(self, state, user, history, boost_items, boost):
        model = nnx.merge(self.graphdef, state)
        rows = jnp.zeros(history.shape, jnp.int32)
        vectors = model.user_vectors(user[None], (rows, history) if model.use_history else None)
        scores = (vectors @ model.item_matrix(TARGET_BEHAVIOR).T)[0]
        return scores.at[boost_items].add(boost, mode="drop")

    def recommend(self, user: int, k: int = 10, exclude_history: bool = True) -> Recommendations:
        """The ``k`` best items to buy for ``user`` (a user id of the training files or log)."""
        if self.user_index is not None:
            if str(user) not in self.user_index:
                raise UnknownKeyError(f"user {user} unknown to the recommender ({self.num_users} users in its log)")
            user = self.user_index[str(user)]
        elif not 0 <= int(user) < self.num_users:
            raise UnknownKeyError(f"user {user} unknown to the recommender (it knows users 0..{self.num_users - 1})")
        if not 1 <= k <= self.num_items:
            raise InputError(f"k={k} must be in [1, {self.num_items}]")
        bought = self.items_of(TARGET_BEHAVIOR, user)
        auxiliary = [b for b in self.model.auxiliary if f"{b}_items" in self.vocab]
        touched = np.concatenate([bought, *(self.items_of(b, user) for b in auxiliary)]).astype(np.int32)
        history = touched if len(touched) else np.full(1, self.num_items, np.int32)  # pad id: ignored
        bonus = np.asarray(self.model.bonus())
        boost_items = np.concatenate([self.items_of(b, user) for b in auxiliary] or [np.zeros(0, np.int32)])
        boost = np.concatenate([np.full(len(self.items_of(b, user)), bonus[a], np.float32)
                                for a, b in enumerate(auxiliary)] or [np.zeros(0, np.float32)])
        scores = np.array(self._scores(self.state, jnp.int32(user), jnp.asarray(history),
                                         jnp.asarray(boost_items, jnp.int32), jnp.asarray(boost)))
        if exclude_history:
            scores[bought] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        ids = top.astype(np.int64) if self.item_ids is None else self.item_ids[top]
        return Recommendations(ids, scores[top].astype(np.float32))
