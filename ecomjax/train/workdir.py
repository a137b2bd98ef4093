"""A run's directory: what it is, what it records, and replacing a run without losing it.

``config.yaml`` keeps the config as the user wrote it (a relative ``workdir`` stays relative);
``run.json`` records where the run really is (the resolved workdir), the task, the run-format
version, and the fingerprints of every input file (``ecomjax.data.inputs``), so evaluation from
another directory finds the same files and refuses changed ones.

Replacing a run (``train.resume=false`` over a workdir that holds one) first moves the old run
into ``WORKDIR/.replaced/``; it is deleted only once the new run has saved its first checkpoint,
and moved back if the new run fails before that. A process killed in between leaves both, and
the next start settles it: a new run with a checkpoint wins, otherwise the old run comes back.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ecomjax.errors import WorkdirError

RUN_RECORD = "run.json"
ASIDE = ".replaced"
FORMAT_VERSION = 2  # 2: run.json, input fingerprints, checkpoint checksums


def open_workdir(config: Any, primary: bool = True) -> Path:
    """The run's workdir, created, as an absolute path; a path that is a file, cannot be created or
    holds another task's run is a one-line error naming it. Only the primary process settles a
    half-done replacement (the others see the result after the loop's barrier)."""
    given = config.workdir
    workdir = Path(given).expanduser().absolute()
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir={given!r}: {workdir} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"workdir={given!r}: cannot create {workdir}: {error.strerror or error}") from None
    if primary:
        settle_replacement(workdir)
    model = workdir / "model.json"
    if model.is_file():
        try:
            task = json.loads(model.read_text()).get("task")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            task = None
        if task is not None and task != config.task:
            raise WorkdirError(f"workdir={given!r}: {workdir} holds a {task} run and this config trains "
                               f"{config.task}: use another workdir")
    return workdir


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory/checkpoints`` holds a finished step of any stage."""
    root = directory / "checkpoints"
    return root.is_dir() and any(step.is_dir() and step.name.isdigit()
                                 for stage in root.iterdir() if stage.is_dir() for step in stage.iterdir())


def _entries(workdir: Path) -> list[Path]:
    return [p for p in workdir.iterdir() if p.name != ASIDE]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def set_aside(workdir: Path) -> Path:
    """Move the run in ``workdir`` into ``workdir/.replaced`` (nothing is deleted)."""
    aside = workdir / ASIDE
    aside.mkdir()
    for entry in _entries(workdir):
        entry.rename(aside / entry.name)
    return aside


def discard_aside(workdir: Path) -> None:
    """The new run has a checkpoint: the replaced run may go."""
    aside = workdir / ASIDE
    if aside.exists():
        shutil.rmtree(aside)


def restore_aside(workdir: Path) -> None:
    """The new run failed before its first checkpoint: its files go, the replaced run comes back."""
    aside = workdir / ASIDE
    if not aside.is_dir():
        return
    for entry in _entries(workdir):
        _remove(entry)
    for entry in aside.iterdir():
        entry.rename(workdir / entry.name)
    aside.rmdir()


def settle_replacement(workdir: Path) -> None:
    """Finish a replacement a killed process left half done (see the module docstring)."""
    if (workdir / ASIDE).is_dir():
        if has_checkpoint(workdir):
            discard_aside(workdir)
        else:
            restore_aside(workdir)


def write_json_atomically(path: Path, value: Any, indent: int = 2) -> None:
    """Write ``path`` whole or not at all: a kill mid-write leaves the previous file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=indent, default=float))
    temporary.replace(path)


def write_run_record(workdir: Path, config: Any, inputs: dict[str, Any]) -> None:
    write_json_atomically(workdir / RUN_RECORD, {
        "format": FORMAT_VERSION, "task": config.task, "workdir": str(workdir),
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "inputs": inputs}, indent=1)


def read_run_record(workdir: Path) -> dict[str, Any]:
    """``run.json``, or ``{}`` for a run written before it existed; an unreadable one is an error."""
    path = Path(workdir) / RUN_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path}: not a readable run record ({error})") from None
