# %% [markdown]
# # 01 · Quickstart: train a recommender, load it, recommend
#
# Train SASRec on the built-in synthetic shop (no data needed), load the finished run back with
# `ecomjax.load`, recommend for a user, then download Amazon Beauty and train the shipped
# config on it. Learning curves at the end.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/01_quickstart.ipynb)
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
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

import ecomjax

print("ecomjax", ecomjax.__version__, "| JAX", jax.__version__, "on", jax.devices())
SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs"))

# %% [markdown]
# ## 1. The synthetic shop
#
# Shoppers with category tastes, popular and niche items, purchases that follow each other (a
# phone, then a case). Every run is a workdir: config, history, checkpoints, metrics.

# %%
small = {"data.synthetic.num_users": 300, "data.synthetic.num_items": 150, "train.epochs": 2,
         "model.hidden_size": 16, "model.ffn_size": 32, "train.batch_size": 8,
         "eval.sampled_negatives": 20} if SMALL else {}
synthetic = ecomjax.train(CONFIGS / "quickstart.yaml",
                          overrides={"workdir": str(RUNS / "quickstart"), "train.progress": False, **small})
print(json.dumps({k: round(v, 4) for k, v in synthetic.metrics["test"].items() if "@10" in k}, indent=1))

# %% [markdown]
# ## 2. Load the run and recommend
#
# `ecomjax.load` reads the workdir alone (no data, no training): the item ids are the original
# ones, and the user's history is excluded from the answer.

# %%
run = ecomjax.load(synthetic.workdir)
history = [int(i) for i in run.vocab["item_ids"][1:6]]
answer = run.recommend(history, k=5)
print("history:", history)
print("next:", answer.item_ids.tolist(), "scores:", answer.scores.round(3).tolist())

# %% [markdown]
# ## 3. Amazon Beauty
#
# `ecomjax data download beauty` fetches the S3-Rec preprocessing of Amazon Beauty and checks
# its sha256; configs name it relative to the data directory. Then the shipped config:
# full-ranking NDCG@10 / HR@10 with history excluded, the protocol of the published tables
# (SASRec: 0.0318 / 0.0605; this config: 0.0570 / 0.0928 on 2 CPU cores).

# %%
subprocess.run([sys.executable, "-m", "ecomjax", "data", "download", "beauty"], check=True)
small = {"train.epochs": 1, "model.hidden_size": 16, "model.ffn_size": 32, "train.max_steps": 60} if SMALL else {}
beauty = ecomjax.train(CONFIGS / "sasrec_beauty.yaml",
                       overrides={"workdir": str(RUNS / "sasrec_beauty"), "train.progress": False, **small})
print({k: round(v, 4) for k, v in beauty.metrics["test"].items() if k in ("ndcg@10", "hr@10")})

# %% [markdown]
# ## 4. Learning curves
#
# `history.jsonl` holds one line per logged step and per evaluation.

# %%
import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for result in (synthetic, beauty):
    rows = [json.loads(line) for line in (result.workdir / "history.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "valid" in r]
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], label=result.metrics["data"]["name"])
    axes[1].plot([r["epoch"] for r in evals], [r["valid"]["ndcg@10"] for r in evals], marker="o",
                 label=result.metrics["data"]["name"])
axes[0].set(xlabel="step", ylabel="training loss")
axes[1].set(xlabel="epoch", ylabel="validation NDCG@10")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()
