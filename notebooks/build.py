"""Build the notebooks from their readable sources: ``notebooks/NN_name.py`` -> ``NN_name.ipynb``.

The ``.py`` files (jupytext "percent" format) are what we edit and review; the ``.ipynb`` files are
what Colab opens, written from them with no outputs. Every notebook starts with the same two
cells, written here: a title cell with the Colab badge and the accelerator note, and the
install cell (``INSTALL``). Both take the repository address from ``pyproject.toml``'s
``[project.urls] Repository``, the one place it lives.

    python notebooks/build.py           # rewrite the shared cells of every source, write every .ipynb
    python notebooks/build.py --check   # exit 1 naming the notebooks that differ (the tests run it)
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "# %% [markdown] tags=[\"header\"]", "# %% tags=[\"install\"]"

INSTALL = '''\
# Install ecomjax when it is not importable (a fresh Colab runtime): clone the repository, then
# pip install it with the extra that matches the runtime. On a TPU runtime the `tpu` extra brings
# a jax built against libtpu. A jax that already drives an accelerator is kept, pinned with a
# constraints file, so pip never swaps it for a CPU build. ECOMJAX_INSTALL_CHECK=1 rehearses all
# of it (clone and `pip install --dry-run`) even when ecomjax is importable: the tests do, with
# ECOMJAX_REPOSITORY pointing at the local clone.
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

REPOSITORY = os.environ.get("ECOMJAX_REPOSITORY", "{repository}")


def accelerator() -> str:
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"):
        return "tpu"
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def accelerator_jax() -> list[str]:
    """Pins for an installed jax that already sees an accelerator (empty when there is none)."""
    if importlib.util.find_spec("jax") is None:
        return []
    import jax
    import jaxlib

    major, minor = (int(p) for p in jax.__version__.split(".")[:2])
    if jax.default_backend() == "cpu" or (major, minor) < (0, 12):
        return []  # nothing to keep: the extra brings a matching jax
    return [f"jax=={{jax.__version__}}", f"jaxlib=={{jaxlib.__version__}}"]


def install(rehearse: bool) -> list[str]:
    source = os.path.abspath("ecomjax-src") if not rehearse else tempfile.mkdtemp(prefix="ecomjax-src-")
    if not os.path.isdir(os.path.join(source, "ecomjax")):
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPOSITORY, source], check=True)
    pins, kind = accelerator_jax(), accelerator()
    extra = "" if pins or kind == "cpu" else f"[{{kind}}]"
    command = [sys.executable, "-m", "pip", "install", "-q", f"{{source}}{{extra}}"]
    if pins:
        constraints = os.path.join(source, "jax-constraints.txt")
        with open(constraints, "w") as f:
            f.write("\\n".join(pins) + "\\n")
        command += ["-c", constraints]
    if rehearse:
        command += ["--dry-run", "--no-deps"]
    subprocess.run(command, check=True)
    if not rehearse:
        os.chdir(source)  # the configs/ of the clone
        sys.path.insert(0, source)
    return command


if importlib.util.find_spec("ecomjax") is None or os.environ.get("ECOMJAX_INSTALL_CHECK") == "1":
    print("install:", " ".join(install(rehearse=importlib.util.find_spec("ecomjax") is not None)))
'''

HEADER = '''\
# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}/{name}.ipynb)
#
# **Accelerator: TPU** (Runtime > Change runtime type > TPU). Every cell also runs on a CPU or
# GPU runtime: JAX picks the accelerator up by itself. `ECOMJAX_NOTEBOOK_SMALL=1` runs a fast,
# small version (the test suite does, on CPU).

'''


def repository() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def shared_cells(name: str) -> str:
    repo = repository()
    colab = repo.replace("https://github.com/", "https://colab.research.google.com/github/") + "/blob/main/notebooks"
    return HEADER.format(colab=colab, name=name) + END + "\n" + INSTALL.format(repository=repo) + "\n"


def sources() -> list[Path]:
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def rebuilt_source(path: Path) -> str:
    """The source with its shared cells (everything before the first cell after the install cell)
    replaced by the current ones."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no header/install cells ({BEGIN!r} ... {END!r}); copy them from another notebook")
    head, rest = text.split(BEGIN, 1)
    after_install = rest.split(END, 1)[1]
    following = after_install.split("\n# %%", 1)
    tail = "# %%" + following[1] if len(following) == 2 else ""
    return head + shared_cells(path.stem) + "\n" + tail


def notebook_json(source: str) -> str:
    notebook = jupytext.reads(source, fmt="py:percent")
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"},
                         "accelerator": "TPU", "colab": {"provenance": []}}
    for n, cell in enumerate(notebook.cells):
        cell.metadata.pop("lines_to_next_cell", None)
        cell.id = f"cell-{n:02d}"  # stable ids: a rebuild of an unchanged source is byte-identical
    return nbformat.writes(notebook) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from its source")
    args = parser.parse_args(argv)
    stale = []
    for path in sources():
        source = rebuilt_source(path)
        target = path.with_suffix(".ipynb")
        built = notebook_json(source)
        if path.read_text() != source or not target.is_file() or target.read_text() != built:
            stale.append(path.stem)
            if not args.check:
                path.write_text(source)
                target.write_text(built)
    if args.check and stale:
        print(f"notebooks out of date: {', '.join(stale)} (run python notebooks/build.py)", file=sys.stderr)
        return 1
    print(("built " + ", ".join(stale)) if stale else "every notebook is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
