"""User-history scores for search results, from a trained next-item recommender.

Search ranks by what the query asks; two users typing "shampoo" still want different bottles.
``HistoryPersonalizer`` restores a sequential recommender's workdir (SASRec or GRU4Rec from
``ecomjax train``) and scores candidate products by the recommender's next-item logit given the
user's history. The search catalogue and the recommender must share product ids (the ids of the
recommender's data file); candidates the recommender never saw get the mean score of the rest,
so they are neither promoted nor buried. ``SearchPipeline`` z-scores these and blends them with
``serve.personalization_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class HistoryPersonalizer:
    """``quantized=True`` serves the int8 model the run saved (``efficiency.quantize``)."""

    def __init__(self, workdir: str | Path, quantized: bool = False):
        from ecomjax.config import load_config
        from ecomjax.data import load_sequences

        if quantized:
            from ecomjax.efficiency.quantize import load_quantized_recommender

            config = load_config(Path(workdir) / "config.yaml")
            graphdef, state = nnx.split(load_quantized_recommender(workdir))
        else:
            from ecomjax.train.restore import restore_run

            run = restore_run(workdir)
            config = run.config
            graphdef, state = nnx.split(run.model())
        self.max_len = config.data.max_len
        dataset = load_sequences(config.data)
        self.index = {str(item): dense for dense, item in enumerate(dataset.item_ids) if dense > 0}

        @jax.jit
        def scores(items, positions, segments):
            model = nnx.merge(graphdef, state)
            hidden = model.encode(items, positions, segments)[:, -1]
            return model.catalogue_scores(hidden)

        self._scores = scores

    def user_scores(self, history: Sequence[str]) -> np.ndarray:
        """Next-item logits over the recommender's items (dense ids) after ``history`` (oldest
        first, product ids as strings); unknown ids are an error naming them."""
        unknown = [h for h in history if str(h) not in self.index]
        if unknown:
            raise KeyError(f"history items unknown to the recommender: {unknown[:5]}")
        if not history:
            raise ValueError("empty history: there is nothing to personalise with")
        dense = [self.index[str(h)] for h in history][-self.max_len:]
        items = np.zeros((1, self.max_len), np.int32)
        items[0, self.max_len - len(dense):] = dense
        col = np.arange(self.max_len)
        segments = (items > 0).astype(np.int32)
        positions = (self.max_len - 1 - col)[None, :].astype(np.int32) * segments
        return np.asarray(self._scores(jnp.asarray(items), jnp.asarray(positions), jnp.asarray(segments)))[0]

    def __call__(self, history: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        """Scores of ``product_ids`` for a user with ``history`` (the ``SearchPipeline`` hook)."""
        logits = self.user_scores(history)
        known = np.array([p in self.index for p in product_ids])
        out = np.zeros(len(product_ids))
        if known.any():
            out[known] = logits[[self.index[p] for p, k in zip(product_ids, known, strict=True) if k]]
            out[~known] = out[known].mean()
        return out
