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

    python -m benchmarks.peers.recbole_env            # prints the venv's python path
    python -m benchmarks.peers.recbole_env --recreate # delete and build again
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.peers.venv import ensure_venv

REPO_ROOT = Path(__file__).resolve().parents[2]

REQUIREMENTS = Path(__file__).resolve().with_name("recbole.txt")
DEFAULT_VENV = REPO_ROOT / ".peers" / "recbole-venv"
MARKER = ".ecomjax-recbole-installed"  # sha256 of the install steps, once installed
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


def ensure_recbole_env(
    venv: Path | str = DEFAULT_VENV,
    *,
    python: str | None = None,
    requirements: Path | str = REQUIREMENTS,
    recreate: bool = False,
    quiet: bool = False,
) -> Path:
    """Create the venv and install the requirements unless already done; return its python."""
    steps = [(tuple(group), tuple(constraints), False) for group, constraints in install_steps(Path(requirements))]
    return ensure_venv(venv, steps, MARKER, python=python, recreate=recreate, quiet=quiet, pythons=(PY_VERSION,))


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
