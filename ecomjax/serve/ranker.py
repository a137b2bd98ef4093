"""Serving a trained satisfaction ranker: all heads of a request's candidates in one compiled call.

``nnx.jit`` re-flattens the module's graph on every call, a fixed cost of milliseconds that
dominates a batch of a few candidates. ``RankerScorer`` splits the model once into a static
graph and a state of arrays, and compiles a pure function of (state, features) with
``jax.jit``: per call only the arrays cross.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.ranking.evaluate import satisfaction_score


class RankerScorer:
    """``scorer(categorical, numeric, sequences) -> {"click", "cvr", "dwell_log", "satisfaction"}``."""

    def __init__(self, workdir: str | Path):
        from ecomjax.ranking.train import head_probabilities, load_ranker

        model, self.schema, self.config, self.dwell_sigma = load_ranker(workdir)
        graphdef, self.state = nnx.split(model)
        self.tasks = model.tasks

        def forward(state, categorical, numeric, sequences):
            return head_probabilities(nnx.merge(graphdef, state)(categorical, numeric, sequences))

        self._forward = jax.jit(forward)

    def __call__(self, categorical: np.ndarray | jax.Array, numeric: np.ndarray | jax.Array,
                 sequences: np.ndarray | jax.Array) -> dict[str, jax.Array]:
        out = self._forward(self.state, jnp.asarray(categorical), jnp.asarray(numeric), jnp.asarray(sequences))
        result = {"click": out["click"]}
        if "purchase" in out:
            result["cvr"] = out["purchase"]
        if "dwell" in out:
            result["dwell_log"] = out["dwell"]
        return result

    def satisfaction(self, categorical: np.ndarray, numeric: np.ndarray, sequences: np.ndarray) -> np.ndarray:
        """The configured satisfaction score of each candidate (shown first: position set to 1)."""
        categorical = np.array(categorical)
        if "position" in [f.name for f in self.schema.categorical]:
            categorical[:, self.schema.index("position")] = 1
        out = {k: np.asarray(v, np.float64) for k, v in self(categorical, numeric, sequences).items()}
        return satisfaction_score(out["click"], out.get("cvr"), out.get("dwell_log"), self.dwell_sigma,
                                  self.config.satisfaction)
