"""Run inside a fresh process with its own device count (``JAX_NUM_CPU_DEVICES``) for test_sharding.

    python tests/mesh_worker.py table DATA MODEL LOSS NUM_ITEMS   -> JSON: shardings, bytes, collectives
    python tests/mesh_worker.py dump WORKDIR OUT.npz [DATA MODEL] -> load a run there, save its params
    python tests/mesh_worker.py tables CONFIG [key=value ...]      -> the id tables of a task's first stage,
                                                                   initialised as training places them
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ecomjax.run
from ecomjax.config import load_config
from ecomjax.models.paths import flat_params
from ecomjax.tasks.next_item import NextItemStage, NextItemTask
from ecomjax.train.sharding import make_mesh, per_device_bytes
from ecomjax.train.state import UpdateProgram


def table(data: int, model: int, loss: str, num_items: int) -> dict:
    """The update step the loop compiles for a Beauty-sized catalogue, on a data x model mesh."""
    config = load_config("configs/sasrec_beauty.yaml", [f"mesh.data={data}", f"mesh.model={model}", f"loss.name={loss}"])
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        stage = NextItemStage(NextItemTask(config), {"num_items": num_items, "max_len": config.data.max_len})
        stage.log_prior = jnp.zeros(num_items + 1)  # the sampler prior shapes the update, not the state
        program = UpdateProgram(stage, config.mesh.rules, mesh, config.seed, total_steps=100)
        state = program.init()
        rows, length = config.train.batch_size, config.data.max_len
        rng = np.random.default_rng(0)
        batch = {key: rng.integers(1, num_items + 1, (rows, length)).astype(np.int32) for key in ("items", "targets")}
        batch["segments"] = np.ones((rows, length), np.int32)
        batch["positions"] = np.broadcast_to(np.arange(length)[::-1], (rows, length)).astype(np.int32).copy()
        compiled, _, _ = program.step(state, batch)
    table = state["params"]["item_embedding"]["ids"]["embedding"][...]
    adam = state["opt_state"][1][0]  # chain(clip, adamw) -> adamw -> ScaleByAdamState
    gathered = re.findall(r"= (\S+) all-gather\(", compiled.as_text())
    memory = compiled.memory_analysis()
    return {
        "table_shape": list(table.shape),
        "table_spec": [str(axis) for axis in table.sharding.spec],
        "table_bytes": table.nbytes,
        "table_bytes_per_device": per_device_bytes(table),
        "mu_bytes_per_device": per_device_bytes(adam.mu["item_embedding"]["ids"]["embedding"][...]),
        "nu_bytes_per_device": per_device_bytes(adam.nu["item_embedding"]["ids"]["embedding"][...]),
        "all_gather_shapes": gathered,
        "argument_bytes_per_device": memory.argument_size_in_bytes,
    }


def dump(workdir: str, out: str, *mesh: str) -> dict:
    """Load a run onto a mesh (default: the one in its config) and save its kept parameters."""
    config = load_config(f"{workdir}/config.yaml", [f"mesh.data={mesh[0]}", f"mesh.model={mesh[1]}"] if mesh else [])
    run = ecomjax.run.load(workdir, mesh=make_mesh(config.mesh))
    params = nnx.state(run.model, nnx.Param)
    np.savez(out, **{name: np.asarray(leaf) for name, leaf in flat_params(params).items()})
    table = params["item_embedding"]["ids"]["embedding"][...]
    return {"devices": jax.device_count(), "step": run.metrics["steps"] if run.metrics else None,
            "table_spec": [str(axis) for axis in table.sharding.spec],
            "table_shard_shape": list(table.sharding.shard_shape(table.shape)),
            "mesh": {k: int(v) for k, v in make_mesh(config.mesh).shape.items()}}


def tables(config_path: str, *overrides: str) -> dict:
    """Every ``vocab``-axis parameter of a task's first stage, in the state the loop initialises
    on the config's mesh: its partition spec and bytes per device against its total bytes."""
    from ecomjax.models.axes import LOGICAL_AXES_KEY
    from ecomjax.models.paths import param_path
    from ecomjax.tasks import task_class

    config = load_config(config_path, list(overrides))
    mesh = make_mesh(config.mesh)
    task = task_class(config.task)(config)
    task.mesh = mesh
    with jax.set_mesh(mesh):
        stage = task.stages(task.prepare())[0]
        program = UpdateProgram(stage, config.mesh.rules, mesh, config.seed, total_steps=10)
        state = program.init()
    out = {}
    for path, variable in nnx.to_flat_state(state["params"]):
        if (variable.get_metadata().get(LOGICAL_AXES_KEY) or (None,))[0] == "vocab":
            array = variable.get_value()
            out[param_path(path)] = {"shape": list(array.shape), "spec": [str(a) for a in array.sharding.spec],
                                     "bytes": array.nbytes, "bytes_per_device": per_device_bytes(array)}
    return {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "tables": out}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "table":
        result = table(int(args[0]), int(args[1]), args[2], int(args[3]))
    elif command == "tables":
        result = tables(*args)
    else:
        result = dump(*args)
    print("RESULT " + json.dumps(result))
