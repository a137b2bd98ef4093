# %% [markdown]
# # 07 · Tuning with Optuna
#
# `ecomjax.tune` searches a config's hyperparameters with Optuna, for any task: the space is YAML
# in the dotted keys of overrides, the study lives in a SQLite database in the tune directory
# (any SQLAlchemy URL shares it between machines), each trial is an ordinary resumable run, the
# median pruner stops trials that fall behind at an evaluation, and the selection reads the
# validation metric only; the test split is scored for the chosen trial alone.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/07_tuning.ipynb)
#
# **Accelerator: TPU** (Runtime > Change runtime type > TPU). Every cell also runs on a CPU or
# GPU runtime: JAX picks the accelerator up by itself. `ECOMJAX_NOTEBOOK_SMALL=1` runs a fast,
# small version (the test suite does, on CPU).

# %% tags=["install"]
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

REPOSITORY = os.environ.get("ECOMJAX_REPOSITORY", "https://github.com/ecomjax/ecomjax")


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
    return [f"jax=={jax.__version__}", f"jaxlib=={jaxlib.__version__}"]


def install(rehearse: bool) -> list[str]:
    source = os.path.abspath("ecomjax-src") if not rehearse else tempfile.mkdtemp(prefix="ecomjax-src-")
    if not os.path.isdir(os.path.join(source, "ecomjax")):
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPOSITORY, source], check=True)
    pins, kind = accelerator_jax(), accelerator()
    extra = "" if pins or kind == "cpu" else f"[{kind}]"
    command = [sys.executable, "-m", "pip", "install", "-q", f"{source}{extra}"]
    if pins:
        constraints = os.path.join(source, "jax-constraints.txt")
        with open(constraints, "w") as f:
            f.write("\n".join(pins) + "\n")
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


# %%
import os
from pathlib import Path

import jax

import ecomjax

print("JAX", jax.__version__, "on", jax.devices())
SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs"))

# %% [markdown]
# ## 1. The space
#
# Three keys of the quickstart recommender. A misspelt key fails before the first trial, like a
# bad override.

# %%
space = RUNS / "quickstart_space.yaml"
space.parent.mkdir(parents=True, exist_ok=True)
space.write_text("""\
train.learning_rate: {log_uniform: [3.0e-4, 3.0e-3]}
model.dropout: {uniform: [0.1, 0.5], step: 0.1}
model.num_layers: {int: [1, 2]}
""")
small = {"data.synthetic.num_users": 300, "data.synthetic.num_items": 150, "train.epochs": 2,
         "model.hidden_size": 16, "model.ffn_size": 32, "train.batch_size": 8,
         "eval.sampled_negatives": 0} if SMALL else {}

# %% [markdown]
# ## 2. The study
#
# `jobs` trials at a time in processes of their own (each pinned to its share of the CPU cores,
# or one per accelerator); stopping the cell and running it again resumes the study.

# %%
result = ecomjax.tune(CONFIGS / "quickstart.yaml", space, trials=3 if SMALL else 20, jobs=1,
                      tune_dir=RUNS / "tune_quickstart", overrides=small, progress=False)
best = result.best
print("best trial:", {k: v for k, v in best.items() if k != "test"})
print("its test metrics:", best.get("test"))
print("reproduce with: ecomjax train", result.tune_dir / "best.yaml")

# %% [markdown]
# ## 3. The report
#
# `report.md` has one row per trial (parameters, validation metric, epochs reached, state, wall
# time); Optuna's plots sit beside it.

# %%
print((result.tune_dir / "report.md").read_text()[:3000])
plots = sorted(result.tune_dir.glob("*.png"))
if plots and not SMALL:
    from IPython.display import Image, display

    for plot in plots:
        display(Image(filename=str(plot)))
