"""Multi-process (multi-host) start-up: one Python process per host, all running the same program.

``jax.distributed.initialize`` must run before JAX touches a device. Every process then sees the
global device list, builds the same mesh, feeds only its own rows of each batch, and takes part
in every collective and checkpoint save; files that describe the run (``config.yaml``,
``history.jsonl``, ``metrics.json``) are written by process 0 alone.

Where the coordinator comes from, first match wins:

1. explicit arguments (``ecomjax train --coordinator HOST:PORT --num-processes N --process-id I``);
2. the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
3. ``auto=True`` (``--distributed``): JAX's own cluster detection (Cloud TPU slices, SLURM,
   Open MPI, Kubernetes), which needs no addresses at all.
"""

from __future__ import annotations

import os

import jax

from ecomjax.errors import InputError


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Join the process group if one is configured; returns whether this run is multi-process."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator is None and not auto:
        if num_processes is not None or process_id is not None:
            raise InputError("--num-processes/--process-id need a coordinator address (--coordinator HOST:PORT)")
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise InputError(
            f"coordinator {coordinator} given without the process count and id "
            "(--num-processes and --process-id, or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise InputError(f"process id {process_id} is outside [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0
