"""Orbax checkpoints of one trained model of a run (``WORKDIR/checkpoints/<stage>``).

A checkpoint holds everything the loop needs to continue as if it had never stopped: the train
state (trained parameters, optimizer state, step), the kept model (the best parameters so far
with the fixed variables, ``buffers``: frozen weights, item features) and the loop's bookkeeping
(epoch, early stopping counters, timings). Batches are a function of ``(seed, epoch)`` and dropout keys a
function of the step, so nothing else is needed: the position inside the epoch follows from the
step counter. A finished run's model is read back from the kept model alone.

Checkpoints are taken after every evaluation, at ``train.checkpoint_every_steps``, on
``train.max_steps`` and on interruption; the last two are kept.

Every step is verified before it is used: once orbax has committed it, the sha256 of each of its
files goes into ``<step>/checksums.json`` (written last, atomically), and a restore checks them.
A step whose files changed (flipped bytes), are missing or cut short (a full disk, a copy that
stopped), or that orbax cannot read, is skipped with a warning naming it, and the newest good
step is used; when none is good the error names every step and why. A save that fails (no space
left) removes its partial step, so the latest step is always a complete one. Steps written
before checksums existed load with a warning, as long as no step of the stage has checksums.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from ecomjax.data.inputs import sha256_file
from ecomjax.errors import CheckpointError, warn
from ecomjax.train.workdir import write_json_atomically

CHECKSUMS = "checksums.json"


class RunCheckpoints:
    def __init__(self, directory: str | Path, max_to_keep: int = 2, *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        # read_only: restore only (ecomjax.load): nothing is created, nothing ever saved
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only)
        if not read_only and jax.process_index() == 0 and self.directory.is_dir():
            # what a save that failed or was killed left (orbax never reads these)
            for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, buffers: Any, best_params: Any, meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():  # already saved at this step (e.g. eval then stop)
            self.manager.delete(step)
        # the fixed variables travel with the kept parameters: together they are the model
        kept = {"params": best_params, "buffers": buffers}
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), kept=ocp.args.StandardSave(kept),
                meta=ocp.args.JsonSave(meta)))
            self.manager.wait_until_finished()
            if jax.process_count() > 1:  # every process's shards are on disk before they are hashed
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"ecomjax-checkpoint-{step}")
            if jax.process_index() == 0:
                _write_checksums(self.directory / str(step))
        except Exception as error:  # orbax reports a full disk as ValueError(RESOURCE_EXHAUSTED ...)
            self._remove_partial(step)
            kept_steps = [s for s in self.manager.all_steps() if s != step]
            raise CheckpointError(f"{self.directory}: checkpoint of step {step} could not be written "
                                  f"({_write_failure(error)}); kept: steps {kept_steps or 'none'}") from None

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed save left of ``step``. Writers orbax could not stop may still
        recreate its temporary folder; orbax never reads one, and the next open removes it."""
        with contextlib.suppress(Exception):  # orbax's writers stop before their directory goes
            self.manager.wait_until_finished()
        for path in self.directory.glob(f"{step}*"):
            if path.name == str(step) or path.name.startswith(f"{step}.orbax-checkpoint-tmp"):
                shutil.rmtree(path, ignore_errors=True)
        self.manager.reload()

    def _good_steps(self):
        """Steps newest first, each verified: yields ``step``; a bad one is skipped with a
        warning, and when none is left the error lists them all."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"{self.directory} holds no checkpoint")
        legacy = not any((self.directory / str(s) / CHECKSUMS).is_file() for s in steps)
        problems = []
        for step in steps:
            problem = None if legacy else verify_step(self.directory / str(step))
            if problem is None:
                if legacy:
                    warn(f"{self.directory / str(step)} has no checksums (written before they existed); "
                         "loading it unverified")
                try:
                    yield step
                    return
                except _Unreadable as error:
                    problem = f"orbax cannot read it ({error})"
            problems.append(f"step {step}: {problem}")
            if step != steps[-1]:
                warn(f"{self.directory / str(step)} skipped: {problem}; trying the previous checkpoint")
        raise CheckpointError(f"{self.directory}: no good checkpoint ({'; '.join(problems)})")

    def _restore(self, args_of) -> tuple[int, Any]:
        steps = self._good_steps()
        step = next(steps)
        while True:
            try:
                return step, self.manager.restore(step, args=args_of())
            except Exception as error:  # a corrupt step: the reader's error is the reason
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                step = steps.throw(_Unreadable(reason))

    def latest_good_step(self) -> int:
        """The step a restore would use (after verification)."""
        return next(self._good_steps())

    def restore(self, abstract_state: Any, abstract_buffers: Any, abstract_params: Any
                ) -> tuple[Any, Any, Any, dict[str, Any]]:
        """(state, buffers, best parameters, bookkeeping) of the newest good checkpoint, laid out
        like the abstract trees (their shardings decide where every array lands)."""
        kept = {"params": abstract_params, "buffers": abstract_buffers}
        _, restored = self._restore(lambda: ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), kept=ocp.args.StandardRestore(kept),
            meta=ocp.args.JsonRestore()))
        kept = restored["kept"]
        return restored["state"], kept["buffers"], kept["params"], restored["meta"]

    def restore_best(self, abstract_buffers: Any, abstract_params: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(buffers, best parameters, bookkeeping): the trained model without the optimizer state."""
        kept = {"params": abstract_params, "buffers": abstract_buffers}
        _, restored = self._restore(lambda: ocp.args.Composite(
            kept=ocp.args.StandardRestore(kept), meta=ocp.args.JsonRestore()))
        return restored["kept"]["buffers"], restored["kept"]["params"], restored["meta"]

    def delete_all(self) -> None:
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def close(self) -> None:
        self.manager.close()


_OS_REASONS = re.compile(r"No space left on device|Disk quota exceeded|Permission denied|Read-only file system|"
                         r"File too large|Input/output error")


def _write_failure(error: Exception) -> str:
    """The reason a write failed, short: the OS error inside orbax's and tensorstore's wrapping."""
    found = _OS_REASONS.search(str(error))
    if found:
        return found.group(0)
    return getattr(error, "strerror", None) or " ".join(str(error).split())[:160] or type(error).__name__


class _Unreadable(Exception):
    """Raised into the step iterator: orbax could not restore that step."""


def _step_files(step_dir: Path) -> dict[str, Path]:
    return {str(f.relative_to(step_dir)): f for f in sorted(step_dir.rglob("*"))
            if f.is_file() and f.name != CHECKSUMS}


def _write_checksums(step_dir: Path) -> None:
    sums = {name: {"size": f.stat().st_size, "sha256": sha256_file(f)} for name, f in _step_files(step_dir).items()}
    write_json_atomically(step_dir / CHECKSUMS, sums, indent=0)


def verify_step(step_dir: Path) -> str | None:
    """``None`` when every file of the step matches its recorded checksum, else what is wrong."""
    path = step_dir / CHECKSUMS
    if not path.is_file():
        return f"no {CHECKSUMS} (a save that did not finish)"
    try:
        sums = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{CHECKSUMS} is unreadable"
    files = _step_files(step_dir)
    missing = sorted(set(sums) - set(files))
    if missing:
        return f"{missing[0]} is missing"
    for name, expected in sums.items():
        size = files[name].stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} when written"
        if sha256_file(files[name]) != expected["sha256"]:
            return f"{name} does not match its checksum (corrupt)"
    return None


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding placeholders for restoring into the layout of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
