"""The input files a run reads, and whether they are still the files it was trained on.

A model scored on a file that was edited after training reports numbers about data it never
saw (a grown file adds users the model has no history for) and would overwrite a good
``metrics.json``; resuming on a changed file would mix two datasets in one run. So every file a
task resolves through ``resolve_data_path`` while it prepares is noted (``recording_inputs``),
fingerprinted (size, modification time, streamed sha256; a directory: every file under it) into
the run record, and checked again on resume and evaluation. Size and mtime decide alone when
both are unchanged; otherwise the sha256 decides, so a file merely touched or copied back is
still the same file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RECORDING: list[dict[str, Path]] = []
_CHUNK = 1 << 20


def note_input(key: str, path: Path) -> Path:
    """Record that the config ``key`` resolved to ``path`` (while a recording is open); returns
    ``path``."""
    for inputs in _RECORDING:
        inputs[key] = path
    return path


@contextmanager
def recording_inputs() -> Iterator[dict[str, Path]]:
    """Collect ``{config key: resolved path}`` of every data file resolved inside the block."""
    inputs: dict[str, Path] = {}
    _RECORDING.append(inputs)
    try:
        yield inputs
    finally:
        _RECORDING.remove(inputs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_print(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def fingerprint(path: Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256"}`` of a file; of a directory the same over all its
    files (``files``: each one's print, ``sha256``: over their names and hashes)."""
    path = Path(path).resolve()
    if path.is_file():
        return {"path": str(path), **_file_print(path)}
    files = {str(f.relative_to(path)): _file_print(f) for f in sorted(path.rglob("*")) if f.is_file()}
    digest = hashlib.sha256("".join(f"{name}\0{p['sha256']}\n" for name, p in files.items()).encode())
    return {"path": str(path), "size": sum(p["size"] for p in files.values()),
            "mtime_ns": max((p["mtime_ns"] for p in files.values()), default=0),
            "sha256": digest.hexdigest(), "files": files}


def fingerprints(inputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {key: fingerprint(path) for key, path in sorted(inputs.items())}


def _same(recorded: dict[str, Any], path: Path) -> tuple[bool, str]:
    """Whether ``path`` still is the recorded file, and if not, what differs."""
    if not path.exists():
        return False, "is gone"
    if "files" in recorded:
        now = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()}
        if now != set(recorded["files"]):
            added, removed = sorted(now - set(recorded["files"])), sorted(set(recorded["files"]) - now)
            return False, f"holds other files (added {added[:3]}, removed {removed[:3]})"
        for name, print_ in recorded["files"].items():
            same, why = _same(print_, path / name)
            if not same:
                return False, f"{name} {why}"
        return True, ""
    stat = path.stat()
    if stat.st_size != recorded["size"]:
        return False, f"has {stat.st_size} bytes, {recorded['size']} when the model was trained"
    if stat.st_mtime_ns == recorded["mtime_ns"]:
        return True, ""
    if sha256_file(path) != recorded["sha256"]:
        return False, "has other contents (sha256 differs) than when the model was trained"
    return True, ""


def changed_inputs(recorded: dict[str, dict[str, Any]], inputs: dict[str, Path]) -> list[str]:
    """One line per file the run was trained on that differs now: ``"KEY: PATH has ..."``. Only
    the same file is compared: a key now pointing at another file (``ecomjax eval`` on a new test
    file) is a deliberate choice, not a change."""
    out = []
    for key, path in sorted(inputs.items()):
        before = recorded.get(key)
        if before is None or Path(before["path"]) != Path(path).resolve():
            continue
        same, why = _same(before, Path(path).resolve())
        if not same:
            out.append(f"{key}: {before['path']} {why}")
    return out
