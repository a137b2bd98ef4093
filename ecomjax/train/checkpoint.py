"""Orbax checkpoints of one trained model of a run (``WORKDIR/checkpoints/<stage>``).

A checkpoint holds everything the loop needs to continue as if it had never stopped: the train
state (trained parameters, optimizer state, step), the kept model (the best parameters so far
with the fixed variables, ``buffers``: frozen weights, item features) and the loop's bookkeeping
(epoch, early stopping counters, timings). Batches are a function of ``(seed, epoch)`` and dropout keys a
function of the step, so nothing else is needed: the position inside the epoch follows from the
step counter. A finished run's model is read back from the kept model alone.

Checkpoints are taken after every evaluation, at ``train.checkpoint_every_steps``, on
``train.max_steps`` and on interruption; the last two are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    def __init__(self, directory: str | Path, max_to_keep: int = 2, *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        # read_only: restore only (ecomjax.load): nothing is created, nothing ever saved
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, buffers: Any, best_params: Any, meta: dict[str, Any]) -> None:
        if self.manager.latest_step() == step:  # already saved at this step (e.g. eval then stop)
            self.manager.delete(step)
        # the fixed variables travel with the kept parameters: together they are the model
        kept = {"params": best_params, "buffers": buffers}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), kept=ocp.args.StandardSave(kept), meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, abstract_buffers: Any, abstract_params: Any
                ) -> tuple[Any, Any, Any, dict[str, Any]]:
        """(state, buffers, best parameters, bookkeeping) of the latest checkpoint, laid out like
        the abstract trees (their shardings decide where every array lands)."""
        kept = {"params": abstract_params, "buffers": abstract_buffers}
        restored = self.manager.restore(self.manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), kept=ocp.args.StandardRestore(kept),
            meta=ocp.args.JsonRestore()))
        kept = restored["kept"]
        return restored["state"], kept["buffers"], kept["params"], restored["meta"]

    def restore_best(self, abstract_buffers: Any, abstract_params: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(buffers, best parameters, bookkeeping): the trained model without the optimizer state."""
        kept = {"params": abstract_params, "buffers": abstract_buffers}
        restored = self.manager.restore(self.manager.latest_step(), args=ocp.args.Composite(
            kept=ocp.args.StandardRestore(kept), meta=ocp.args.JsonRestore()))
        return restored["kept"]["buffers"], restored["kept"]["params"], restored["meta"]

    def delete_all(self) -> None:
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding placeholders for restoring into the layout of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
