"""User-history scores for search results, from a trained next-item recommender.

Search ranks by what the query asks; two users typing "shampoo" still want different bottles.
``HistoryPersonalizer`` loads a sequential recommender's workdir (SASRec or GRU4Rec from
``ecomjax train``) and scores candidate products by the recommender's next-item logit given the
user's history. The search catalogue and the recommender must share product ids (the ids of the
recommender's data file); candidates the recommender never saw get the mean score of the rest,
so they are neither promoted nor buried. ``SearchPipeline`` z-scores these and blends them with
``serve.personalization_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecomjax.errors import InputError


class HistoryPersonalizer:
    """``quantized=True`` serves the int8 model the run saved (``efficiency.quantize``)."""

    def __init__(self, workdir: str | Path, quantized: bool = False):
        from ecomjax.run import load
        from ecomjax.serve.recommend import Recommender

        run = load(workdir)
        if run.config.task != "next_item":
            raise InputError(f"{workdir} is a {run.config.task} run: personalisation needs a next-item recommender")
        model = run.model
        if quantized:
            from ecomjax.tasks.next_item import load_quantized

            model = load_quantized(run)
        self.recommender = Recommender(model, run.vocab["item_ids"], run.spec["max_len"])

    @classmethod
    def from_recommender(cls, recommender) -> HistoryPersonalizer:
        """Over an already loaded ``Recommender`` (the HTTP service's, so both share it)."""
        personalizer = cls.__new__(cls)
        personalizer.recommender = recommender
        return personalizer

    def user_scores(self, history: Sequence[str]) -> np.ndarray:
        """Next-item logits over the recommender's items (dense ids) after ``history`` (oldest
        first, product ids as strings); unknown ids are an error naming them."""
        return self.recommender.scores(history)

    def __call__(self, history: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        """Scores of ``product_ids`` for a user with ``history`` (the ``SearchPipeline`` hook)."""
        logits = self.user_scores(history)
        index = self.recommender.index
        known = np.array([p in index for p in product_ids])
        out = np.zeros(len(product_ids))
        if known.any():
            out[known] = logits[[index[p] for p, k in zip(product_ids, known, strict=True) if k]]
            out[~known] = out[known].mean()
        return out
