"""Orbax checkpoints of a training run: train state, best parameters and loop bookkeeping.

A checkpoint is taken after every evaluation, at ``train.checkpoint_every_steps``, on
``train.max_steps`` and on interruption. It holds everything the loop needs to continue as if
it had never stopped: the batches are a function of ``(seed, epoch)`` and dropout keys a
function of the step, so (state, epoch, early-stopping counters) is enough: the position inside
the epoch follows from the step counter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, best_params: Any, meta: dict[str, Any]) -> None:
        if self.manager.latest_step() == step:  # already saved at this step (e.g. eval then stop)
            self.manager.delete(step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                best_params=ocp.args.StandardSave(best_params),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, abstract_params: Any) -> tuple[Any, Any, dict[str, Any]]:
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                best_params=ocp.args.StandardRestore(abstract_params),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["best_params"], restored["meta"]

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding placeholders for restoring into the layout of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
