"""Run inside a fresh process with its own device count (``JAX_NUM_CPU_DEVICES``) for test_sharding.

    python tests/mesh_worker.py table DATA MODEL LOSS NUM_ITEMS   -> JSON: shardings, bytes, collectives
    python tests/mesh_worker.py dump WORKDIR OUT.npz [DATA MODEL] -> restore a run there, save its params
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ecomjax.config import load_config
from ecomjax.train.restore import restore_run
from ecomjax.train.sharding import make_mesh, per_device_bytes
from ecomjax.train.step import build_next_item_step, init_next_item_state


def table(data: int, model: int, loss: str, num_items: int) -> dict:
    config = load_config(
        "configs/sasrec_beauty.yaml", [f"mesh.data={data}", f"mesh.model={model}", f"loss.name={loss}"]
    )
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        step = build_next_item_step(config, num_items, 100, jnp.zeros(num_items + 1), mesh)
        state = init_next_item_state(step)
        rows, length = config.train.batch_size, config.data.max_len
        rng = np.random.default_rng(0)
        batch = {key: rng.integers(1, num_items + 1, (rows, length)).astype(np.int32) for key in ("items", "targets")}
        batch["segments"] = np.ones((rows, length), np.int32)
        batch["positions"] = np.broadcast_to(np.arange(length)[::-1], (rows, length)).astype(np.int32).copy()
        compiled = step.step_fn.lower(state, batch).compile()
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
    overrides = {"data": int(mesh[0]), "model": int(mesh[1])} if mesh else {}
    run = restore_run(workdir, **overrides)
    arrays = {}
    for prefix, tree in (("best", run.best_params), ("params", run.state["params"])):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            arrays[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    np.savez(out, **arrays)
    table = run.state["params"]["item_embedding"]["ids"]["embedding"][...]
    return {"devices": jax.device_count(), "step": run.step,
            "table_spec": [str(axis) for axis in table.sharding.spec],
            "table_shard_shape": list(table.sharding.shard_shape(table.shape)),
            "mesh": dict(run.mesh.shape)}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "table":
        result = table(int(args[0]), int(args[1]), args[2], int(args[3]))
    else:
        result = dump(*args)
    print("RESULT " + json.dumps(result))
