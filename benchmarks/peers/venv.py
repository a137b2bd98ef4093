"""Build a peer library's own virtual environment (standard library only).

Reference stacks (torch, sentence-transformers, timm-era packages) cannot live beside jax>=0.12,
so each reference script keeps a venv under ``.peers/`` and installs into it in ordered steps
(torch alone first, so pip takes the local CPU wheel). A marker file holds a hash of the steps:
an unchanged venv is reused, a changed recipe or a broken interpreter rebuilds it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PYTHONS = ((3, 11), (3, 12))  # in order of preference; both have torch 2.13 CPU wheels
# One install step: (requirements, constraints, no_deps).
Step = tuple[tuple[str, ...], tuple[str, ...], bool]


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python(explicit: str | None = None, pythons: Sequence[tuple[int, int]] = PYTHONS) -> str:
    """A Python of ``pythons``, in that order of preference: --python, $ECOMJAX_PEERS_PYTHON,
    pyenv's versions, PATH."""
    candidates = [c for c in (explicit, os.environ.get("ECOMJAX_PEERS_PYTHON")) if c]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for major, minor in pythons:
        candidates += sorted(glob.glob(f"{pyenv_root}/versions/{major}.{minor}.*/bin/python"))
        candidates += [p for p in (shutil.which(f"python{major}.{minor}"),) if p]
    by_version: dict[tuple[int, int] | None, str] = {}
    for cand in candidates:
        by_version.setdefault(_version_of(cand), cand)
    for version in pythons:
        if version in by_version:
            return by_version[version]
    wanted = " or ".join(f"{major}.{minor}" for major, minor in pythons)
    raise RuntimeError(
        f"no Python {wanted} found (tried --python, $ECOMJAX_PEERS_PYTHON, pyenv versions, "
        f"PATH: {candidates}); the peer venv needs one"
    )


def run(cmd: list[str], quiet: bool) -> None:
    """Echo and run ``cmd``; its output goes to stderr so stdout carries only results."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else sys.stderr)


def ensure_venv(
    venv: Path | str,
    steps: Sequence[Step],
    marker_name: str,
    *,
    python: str | None = None,
    recreate: bool = False,
    quiet: bool = False,
    pythons: Sequence[tuple[int, int]] = PYTHONS,
) -> Path:
    """Create ``venv`` with a Python of ``pythons`` and run the install ``steps`` unless already
    done; return its python."""
    venv = Path(venv)
    py = venv / "bin" / "python"
    marker = venv / marker_name
    digest = hashlib.sha256(json.dumps(list(steps)).encode()).hexdigest()  # tuples dump as lists
    if recreate and venv.exists():
        shutil.rmtree(venv)
    if py.exists() and _version_of(str(py)) not in pythons:
        shutil.rmtree(venv)  # broken, or of a Python we cannot use: build it again
    if marker.exists() and marker.read_text().strip() == digest:
        return py
    if not py.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        run([find_python(python, pythons), "-m", "venv", str(venv)], quiet)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    for i, (requirements, constraints, no_deps) in enumerate(steps, start=1):
        extra: list[str] = ["--no-deps"] if no_deps else []
        if constraints:
            cfile = venv / f".constraints-step{i}.txt"
            cfile.write_text("\n".join(constraints) + "\n")
            extra += ["-c", str(cfile)]
        run([*pip, *extra, *requirements], quiet)
    marker.write_text(digest + "\n")
    return py
