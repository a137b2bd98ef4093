"""Serving a trained satisfaction ranker: all heads of a request's candidates in one compiled call.

``nnx.jit`` re-flattens the module's graph on every call, a fixed cost of milliseconds that
dominates a batch of a few candidates. ``RankerScorer`` splits the model once into a static
graph and a state of arrays, and compiles a pure function of (state, features) with
``jax.jit``: per call only the arrays cross. ``ecomjax.load(WORKDIR).score(features)`` is this.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.data.schema import FeatureSchema
from ecomjax.errors import InputError, UnknownKeyError
from ecomjax.eval.satisfaction import SatisfactionConfig, satisfaction_score

FEATURES = ("categorical", "numeric", "sequences")


class RankerScorer:
    """``score({"categorical", "numeric", "sequences"}) -> {"click", "cvr", "dwell_log", "satisfaction"}``."""

    def __init__(self, model: nnx.Module, schema: FeatureSchema, satisfaction: SatisfactionConfig,
                 dwell_sigma: float):
        from ecomjax.tasks.ranker import head_probabilities

        self.schema, self.weights, self.dwell_sigma = schema, satisfaction, dwell_sigma
        self.tasks = tuple(model.tasks)
        graphdef, self.state = nnx.split(model)

        def forward(state, categorical, numeric, sequences):
            return head_probabilities(nnx.merge(graphdef, state)(categorical, numeric, sequences))

        self._forward = jax.jit(forward)

    def __call__(self, categorical: np.ndarray | jax.Array, numeric: np.ndarray | jax.Array,
                 sequences: np.ndarray | jax.Array) -> dict[str, jax.Array]:
        """Per-head outputs of the candidates as given (positions included)."""
        self._check(categorical, numeric, sequences)
        out = self._forward(self.state, jnp.asarray(categorical), jnp.asarray(numeric), jnp.asarray(sequences))
        result = {"click": out["click"]} if "click" in out else {}
        if "purchase" in out:
            result["cvr"] = out["purchase"]
        if "dwell" in out:
            result["dwell_log"] = out["dwell"]
        return result

    def score(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every head's score and the configured satisfaction score of each candidate, scored as
        if shown first (position set to 1): what re-ranking a list can change."""
        missing = [k for k in FEATURES if k not in features]
        if missing:
            raise UnknownKeyError(f"features: missing {missing}; a ranker reads {list(FEATURES)}")
        categorical = np.array(features["categorical"])
        if "position" in [f.name for f in self.schema.categorical]:
            categorical[:, self.schema.index("position")] = 1
        out = {k: np.asarray(v, np.float64) for k, v in self(categorical, features["numeric"],
                                                              features["sequences"]).items()}
        if "click" in out:
            out["satisfaction"] = satisfaction_score(out["click"], out.get("cvr"), out.get("dwell_log"),
                                                     self.dwell_sigma, self.weights)
        return out

    def satisfaction(self, categorical: np.ndarray, numeric: np.ndarray, sequences: np.ndarray) -> np.ndarray:
        return self.score({"categorical": categorical, "numeric": numeric, "sequences": sequences})["satisfaction"]

    def _check(self, categorical, numeric, sequences) -> None:
        s = self.schema
        n = np.shape(categorical)[0]
        expected = {"categorical": (n, len(s.categorical)), "numeric": (n, len(s.numeric))}
        for name, value in (("categorical", categorical), ("numeric", numeric)):
            if tuple(np.shape(value)) != expected[name]:
                raise InputError(f"features.{name}: shape {list(np.shape(value))}, the ranker reads "
                                 f"{list(expected[name])} (fields {self._names(name)})")
        if np.shape(sequences)[:2] != (n, len(s.sequences)):
            raise InputError(f"features.sequences: shape {list(np.shape(sequences))}, the ranker reads "
                             f"[{n}, {len(s.sequences)}, max_len]")
        for i, f in enumerate(s.categorical):
            column = np.asarray(categorical)[:, i]
            if n and (column.min() < 0 or column.max() >= f.vocab_size):
                raise InputError(f"features.categorical: field {f.name!r} has ids outside [0, {f.vocab_size}) "
                                 "(0 = unknown)")

    def _names(self, kind: str) -> list[str]:
        return [f.name for f in self.schema.categorical] if kind == "categorical" else list(self.schema.numeric)
