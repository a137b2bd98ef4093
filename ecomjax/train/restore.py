"""Load a run's checkpoint onto any mesh: a different device count, another data x model split.

Orbax reads each array straight into the shardings of the target layout, so a model trained on
an 8-chip slice restores onto one device for serving (or the other way round) without ever
being assembled in full on a host. Values are bit-identical; only placement changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import Config, load_config
from ecomjax.data import load_sequences
from ecomjax.data.item_text import model_item_features
from ecomjax.train.checkpoint import RunCheckpoints
from ecomjax.train.sharding import make_mesh
from ecomjax.train.step import abstract_next_item_state, build_next_item_step


@dataclass
class RestoredRun:
    config: Config
    mesh: jax.sharding.Mesh
    step: int
    state: dict[str, Any]  # params, buffers, opt_state, step: as saved, laid out for ``mesh``
    best_params: Any  # parameters of the best validation epoch
    meta: dict[str, Any]
    graphdef: nnx.GraphDef

    def model(self, best: bool = True) -> nnx.Module:
        params = self.best_params if best else self.state["params"]
        return nnx.merge(self.graphdef, params, self.state["buffers"])


def restore_run(workdir: str | Path, devices: list[jax.Device] | None = None, **mesh_overrides: Any) -> RestoredRun:
    """Restore the latest checkpoint of ``workdir`` onto ``devices`` (default: all) with the run's
    ``mesh`` section, updated by ``mesh_overrides`` (``data=1, model=8``, ``rules={...}``)."""
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise FileNotFoundError(f"{workdir} has no config.yaml: not a run directory")
    overrides = {f"mesh.{key}": value for key, value in mesh_overrides.items()}
    config = load_config(workdir / "config.yaml", overrides)
    checkpoints = RunCheckpoints(workdir / "checkpoints")
    try:
        step_number = checkpoints.latest_step()
        if step_number is None:
            raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
        dataset = load_sequences(config.data)  # the catalogue size fixes the table shapes
        mesh = make_mesh(config.mesh, devices)
        with jax.set_mesh(mesh):
            # The schedule length, sampler prior and item counts (popularity pruning) shape the
            # update, not the state: placeholders do. Item features only fix shapes here; their
            # values come from the checkpoint.
            item_text = model_item_features(config.model, dataset)
            step = build_next_item_step(config, dataset.num_items, 1, jnp.zeros(dataset.num_items + 1), mesh,
                                        *(() if item_text is None else (item_text.features, item_text.words)),
                                        item_counts=np.zeros(dataset.num_items + 1, np.int64))
            abstract = abstract_next_item_state(step)
            state, best_params, meta = checkpoints.restore(abstract, abstract["params"])
    finally:
        checkpoints.close()
    return RestoredRun(config, mesh, step_number, state, best_params, meta, step.graphdef)
