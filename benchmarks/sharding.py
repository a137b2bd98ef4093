"""Per-device memory and step time of SASRec (Beauty config) over mesh shapes, and what a
10-million-item table costs per device on an 8-chip slice.

Part 1 trains the shipped ``configs/sasrec_beauty.yaml`` step on real Beauty batches (synthetic
batches of the same catalogue size if the file is absent) for each ``data x model`` mesh that
uses all devices (8x1, 4x2, 2x4, 1x8 on 8 devices): parameter + Adam bytes per device (from the
arrays' shardings), XLA's compiled memory plan per device, compile time and step time.

Part 2 never allocates: it builds the 10M x 128 model abstractly (``jax.eval_shape``), compiles
its train step for an 8-device mesh and reads the compiled memory analysis, for the table
replicated (8x1) and vocab-parallel (1x8), with full and sampled softmax.

On this CPU machine the 8 "devices" are threads sharing two cores (``JAX_NUM_CPU_DEVICES=8``,
set here before JAX starts), so step times show the cost of the collectives and of splitting
small matmuls, not a speed-up; memory per device is what carries over to real chips.

    python -m benchmarks.sharding [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # before JAX starts: 8 CPU devices

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.smoke import as_cli, beauty_overrides, require_scratch
from ecomjax.bench.memory import compiled_memory
from ecomjax.bench.report import print_table, write_results
from ecomjax.bench.timing import Timing
from ecomjax.config import load_config
from ecomjax.data import load_sequences
from ecomjax.data.pipeline import NextItemTrainData
from ecomjax.data.split import leave_one_out
from ecomjax.tasks.next_item import NextItemStage, NextItemTask
from ecomjax.train.sharding import batch_sharding, make_mesh, per_device_bytes
from ecomjax.train.state import UpdateProgram, batch_shardings, device_batch

ROOT = Path(__file__).resolve().parent.parent

MiB = 1 << 20


def _stage(config, num_items: int) -> NextItemStage:
    """The recommender stage training builds, for a catalogue of ``num_items`` (no data read)."""
    stage = NextItemStage(NextItemTask(config), {"num_items": num_items, "max_len": config.data.max_len})
    stage.log_prior = jnp.zeros(num_items + 1)  # the sampler prior shapes the update, not the state
    return stage


def mesh_shapes(devices: int) -> list[tuple[int, int]]:
    return [(devices // m, m) for m in range(1, devices + 1) if devices % m == 0]


def state_bytes_per_device(state) -> dict[str, int]:
    params = sum(per_device_bytes(x) for x in jax.tree.leaves(state["params"]))
    opt = sum(per_device_bytes(x) for x in jax.tree.leaves(state["opt_state"]))
    table = per_device_bytes(state["params"]["item_embedding"]["ids"]["embedding"][...])
    return {"params": params, "opt_state": opt, "item_table": table}


def measure_mesh(config_path: str, data: int, model: int, steps: int, batches, overrides: list[str]) -> dict:
    config = load_config(config_path, [*overrides, f"mesh.data={data}", f"mesh.model={model}"])
    mesh = make_mesh(config.mesh)
    num_items = batches["num_items"]
    with jax.set_mesh(mesh):
        program = UpdateProgram(_stage(config, num_items), config.mesh.rules, mesh, config.seed, 10_000)
        state = program.init()
        device_batches = [device_batch(rows, batch_shardings(rows, mesh)) for rows in batches["rows"]]
        t0 = time.perf_counter()
        compiled = program.compile(state, device_batches[0])
        compile_s = time.perf_counter() - t0
        for i in range(3):  # warm-up
            state, metrics = compiled(state, device_batches[i % len(device_batches)])
        jax.block_until_ready(state)
        samples = []
        for i in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, device_batches[i % len(device_batches)])
            jax.block_until_ready((state, metrics))
            samples.append(time.perf_counter() - t0)
    timing = Timing.from_samples(samples, warmup=3, compile_seconds=compile_s)
    memory = compiled_memory(compiled)
    return {
        "mesh": f"{data}x{model}",
        "data": data,
        "model": model,
        "state_bytes_per_device": state_bytes_per_device(state),
        "compiled_memory_per_device": memory.to_dict() if memory else None,
        "step": timing.to_dict(),
        "final_loss": float(metrics["loss"]),
    }


def large_table_estimate(num_items: int, width: int, devices: int, overrides: list[str],
                         losses: tuple[str, ...] = ("full_softmax", "sampled_softmax")) -> list[dict]:
    """Compiled per-device memory of a train step with a ``num_items x width`` table, no allocation."""
    rows = []
    for data, model in ((devices, 1), (1, devices)):
        for loss in losses:
            config = load_config(
                "configs/sasrec_beauty.yaml",
                [*overrides, f"mesh.data={data}", f"mesh.model={model}", f"model.hidden_size={width}", f"loss.name={loss}",
                 "loss.num_negatives=4096"],
            )
            mesh = make_mesh(config.mesh)
            with jax.set_mesh(mesh):
                program = UpdateProgram(_stage(config, num_items), config.mesh.rules, mesh, config.seed, 10_000)
                state = program.layout.abstract  # shapes and shardings only: nothing is allocated
                shape = (config.train.batch_size, config.data.max_len)
                batch = {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding(mesh))
                         for key in ("items", "targets", "segments", "positions")}
                t0 = time.perf_counter()
                compiled = program.compile(state, batch)
                compile_s = time.perf_counter() - t0
            table = state["params"]["item_embedding"]["ids"]["embedding"].get_value()
            table_device = int(np.prod(table.sharding.shard_shape(table.shape))) * 4
            state_device = sum(
                int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(state)
            )
            memory = compiled_memory(compiled)
            rows.append({
                "mesh": f"{data}x{model}",
                "loss": loss,
                "table_shape": list(table.shape),
                "table_bytes_total": int(np.prod(table.shape)) * 4,
                "table_bytes_per_device": table_device,
                "state_bytes_per_device": state_device,  # params + Adam moments
                "compiled_memory_per_device": memory.to_dict() if memory else None,
                "compile_seconds": round(compile_s, 2),
            })
    return rows


def training_batches(config_path: str, count: int, overrides: list[str]) -> dict:
    config = load_config(config_path, overrides)
    try:
        dataset = load_sequences(config.data)
        source = dataset.name
    except FileNotFoundError:
        config = load_config(config_path, ["data.source=synthetic", "data.synthetic.num_items=12101",
                                           "data.synthetic.num_users=22363"])
        dataset = load_sequences(config.data)
        source = "synthetic (Beauty file not found)"
    train = NextItemTrainData(leave_one_out(dataset), config.data.max_len, config.train.batch_size, config.seed)
    epoch = train.batches(0)
    return {"num_items": dataset.num_items, "source": source, "rows": [epoch[i] for i in range(count)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sasrec_beauty.yaml")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mesh shape")
    parser.add_argument("--large-items", type=int, default=10_000_000)
    parser.add_argument("--large-width", type=int, default=128)
    parser.add_argument("--quick", action="store_true",
                        help="smoke: a tiny model on 400 Beauty users, 2 timed steps, a 100,000 x 16 table")
    args = parser.parse_args()
    require_scratch(args.quick)
    os.environ.setdefault("ECOMJAX_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    overrides = []
    if args.quick:
        args.steps, args.large_items, args.large_width = 2, 100_000, 16
        overrides = as_cli(beauty_overrides())

    devices = jax.device_count()
    batches = training_batches(args.config, 4 if args.quick else 16, overrides)
    shapes = mesh_shapes(devices)
    if args.quick:  # every compile takes seconds here: the two ends of the range
        shapes = [shapes[0], shapes[-1]]
    meshes = [measure_mesh(args.config, d, m, args.steps, batches, overrides) for d, m in shapes]
    rows = [{
        "mesh (data x model)": r["mesh"],
        "params MiB/dev": r["state_bytes_per_device"]["params"] / MiB,
        "Adam MiB/dev": r["state_bytes_per_device"]["opt_state"] / MiB,
        "table MiB/dev": r["state_bytes_per_device"]["item_table"] / MiB,
        "compiled total MiB/dev": (r["compiled_memory_per_device"] or {}).get("total_bytes", 0) / MiB,
        "compile s": r["step"]["compile_s"],
        "step ms p50": r["step"]["p50_s"] * 1e3,
    } for r in meshes]
    print_table(rows, list(rows[0]), title=f"SASRec Beauty config on {devices} {jax.devices()[0].platform} devices "
                f"({batches['source']}, {args.steps} steps each)",
                formats={k: ".2f" for k in rows[0] if "MiB" in k or k == "compile s"} | {"step ms p50": ".1f"})

    large = large_table_estimate(args.large_items, args.large_width, devices, overrides,
                                 ("sampled_softmax",) if args.quick else ("full_softmax", "sampled_softmax"))
    GiB = 1 << 30
    large_rows = [{
        "mesh": r["mesh"], "loss": r["loss"],
        "table GiB/dev": r["table_bytes_per_device"] / GiB,
        "params+Adam GiB/dev": r["state_bytes_per_device"] / GiB,
        "compiled total GiB/dev": (r["compiled_memory_per_device"] or {}).get("total_bytes", 0) / GiB,
        "temp GiB/dev": (r["compiled_memory_per_device"] or {}).get("temp_bytes", 0) / GiB,
    } for r in large]
    print_table(large_rows, list(large_rows[0]),
                title=f"{args.large_items:,} items x {args.large_width} table, train step compiled for {devices} devices",
                formats={k: ".3f" for k in large_rows[0] if "GiB" in k})
    path = write_results("sharding", {
        "config": args.config,
        "data": batches["source"],
        "devices": devices,
        "note": "CPU devices share the machine's cores: step times show collective overhead, not speed-up",
        "meshes": meshes,
        "large_table": {"num_items": args.large_items, "width": args.large_width, "rows": large},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
