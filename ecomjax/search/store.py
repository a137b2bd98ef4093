"""Save and load the parameters of small NNX modules as ``.npz`` (one array per parameter path).

The search models are trained once and then served many times from a workdir; a flat archive
of named arrays is all they need (no optimizer state: training does not resume mid-way, it is
minutes long). Loading checks every name and shape, so a workdir from a different config fails
with the parameter that differs instead of a model that silently computes garbage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx


def _key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def save_params(model: nnx.Module, path: str | Path) -> None:
    arrays = {_key(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    path = Path(path)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_params(model: nnx.Module, path: str | Path) -> nnx.Module:
    """Overwrite ``model``'s parameters with those saved at ``path`` (in place; returns it)."""
    with np.load(path) as archive:
        saved = {name: archive[name] for name in archive.files}
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    expected = {_key(p) for p, _ in flat}
    if missing := expected - saved.keys():
        raise ValueError(f"{path}: no saved value for parameters {sorted(missing)[:5]}")
    if extra := saved.keys() - expected:
        raise ValueError(f"{path}: saved parameters {sorted(extra)[:5]} do not exist in the model")
    for p, variable in flat:
        value = saved[_key(p)]
        if value.shape != variable.get_value().shape:
            raise ValueError(f"{path}: parameter {_key(p)} has shape {value.shape}, the model expects "
                             f"{variable.get_value().shape}")
        variable.set_value(value)
    nnx.update(model, nnx.from_flat_state(flat))
    return model
