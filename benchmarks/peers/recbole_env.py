"""Create (idempotently) the Python 3.11 virtual environment that runs RecBole 1.2.1.

RecBole 1.2.1 needs ``numpy<2`` and an old setuptools, which cannot live beside ecomjax's own
environment (numpy>=2, jax), so the peer benchmark builds this one under ``<repo>/.peers/``.
The requirements live in ``benchmarks/peers/recbole.txt``; they are installed in three steps:

1. torch alone, so pip takes the local CPU wheel rather than resolving a CUDA build through
   recbole's ``torch>=1.10``;
2. recbole, with every pin except setuptools as a constraint (so torch stays put and numpy/pandas
   are not installed at 2.x only to be downgraded);
3. the remaining pins. ``setuptools<70`` can only come last: torch 2.13's metadata asks for
   ``setuptools>=77.0.3`` (for ``torch.utils.cpp_extension``, unused here), so pip refuses it in
   the same resolution as torch and only warns when it is installed afterwards.

Standard library only: the driver may run this from any Python.

    python benchmarks/peers/recbole_env.py            # prints the venv's python path
    python benchmarks/peers/recbole_env.py --recreate # delete and build again
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().with_name("recbole.txt")
DEFAULT_VENV = REPO_ROOT / ".peers" / "recbole-venv"
MARKER = ".ecomjax-recbole-installed"  # sha256 of recbole.txt's requirements, once installed
PY_VERSION = (3, 11)


def _requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _name(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if ch in "<>=!~;[ ":
            return requirement[:i].strip().lower()
    return requirement.strip().lower()


def install_steps(path: Path = REQUIREMENTS) -> list[tuple[list[str], list[str]]]:
    """(requirements, constraints) for each pip step, in order: torch, recbole, the rest."""
    lines = _requirement_lines(path)
    by_name = {_name(r): r for r in lines}
    for needed in ("torch", "recbole"):
        if needed not in by_name:
            raise ValueError(f"{path} must pin {needed}")
    rest = [r for r in lines if _name(r) not in ("torch", "recbole")]
    # setuptools<70 conflicts with torch's declared setuptools>=77.0.3: never a constraint.
    constraints = [r for r in lines if _name(r) not in ("recbole", "setuptools")]
    return [([by_name["torch"]], []), ([by_name["recbole"]], constraints), (rest, [])]


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python311(explicit: str | None = None) -> str:
    """A Python 3.11 interpreter: --python, $ECOMJAX_PEERS_PYTHON, PATH, or pyenv's versions."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("ECOMJAX_PEERS_PYTHON"):
        candidates.append(os.environ["ECOMJAX_PEERS_PYTHON"])
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.11*", "bin", "python")))
    candidates += [p for p in (shutil.which("python3.11"),) if p]
    candidates += ["/usr/bin/python3.11", "/usr/local/bin/python3.11"]
    for cand in candidates:
        if cand and _version_of(cand) == PY_VERSION:
            return cand
    raise RuntimeError(
        "no Python 3.11 found (tried --python, $ECOMJAX_PEERS_PYTHON, pyenv versions, PATH); "
        "RecBole 1.2.1 needs one"
    )


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _digest(path: Path) -> str:
    """Hash of the requirement lines (comments and blank lines do not count)."""
    return hashlib.sha256("\n".join(_requirement_lines(path)).encode()).hexdigest()


def _run(cmd: list[str], quiet: bool) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    # pip's own output goes to stderr: stdout carries only the resulting path.
    subprocess.run(cmd, check=True, stdout=sys.stderr if not quiet else subprocess.DEVNULL)


def ensure_recbole_env(
    venv: Path | str = DEFAULT_VENV,
    *,
    python: str | None = None,
    requirements: Path | str = REQUIREMENTS,
    recreate: bool = False,
    quiet: bool = False,
) -> Path:
    """Create the venv and install the requirements unless already done; return its python."""
    venv = Path(venv)
    requirements = Path(requirements)
    py = venv_python(venv)
    marker = venv / MARKER
    if recreate and venv.exists():
        shutil.rmtree(venv)
    if py.exists() and _version_of(str(py)) != PY_VERSION:
        shutil.rmtree(venv)  # broken or of the wrong Python: build it again
    if marker.exists() and marker.read_text().strip() == _digest(requirements):
        return py
    if not py.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run([find_python311(python), "-m", "venv", str(venv)], quiet)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    for i, (group, constraints) in enumerate(install_steps(requirements), start=1):
        extra: list[str] = []
        if constraints:
            cfile = venv / f".constraints-step{i}.txt"
            cfile.write_text("\n".join(constraints) + "\n")
            extra = ["-c", str(cfile)]
        _run([*pip, *extra, *group], quiet)
    marker.write_text(_digest(requirements) + "\n")
    return py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="where to create it")
    parser.add_argument("--python", default=None, help="the Python 3.11 interpreter to use")
    parser.add_argument("--recreate", action="store_true", help="delete the venv first")
    parser.add_argument("--quiet", action="store_true", help="hide pip's output")
    args = parser.parse_args(argv)
    py = ensure_recbole_env(args.venv, python=args.python, recreate=args.recreate, quiet=args.quiet)
    print(py)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
