# %% [markdown]
# # 03 · The satisfaction ranker: click, purchase and dwell heads
#
# A multi-task ranker (DCN-v2 feature crosses, MMoE experts, one head each for click, purchase
# and dwell time) trained on synthetic impressions whose true probabilities are known, so every
# metric has a ceiling. Purchase is learnt the ESMM way (pCTR x pCVR over every impression);
# the same run trains the classic baseline, a CVR model on clicked impressions only, and the
# notebook compares the two and draws the calibration of each head against the truth.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/03_satisfaction_ranker.ipynb)
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
import numpy as np

import ecomjax
from ecomjax.tasks.ranker import load_impressions

print("JAX", jax.__version__, "on", jax.devices())
SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs"))

# %% [markdown]
# ## 1. Train
#
# The shipped world is 1.6M impressions (160,000 lists of 10); the small setting 5,000.

# %%
small = {"data.synthetic.num_users": 300, "data.synthetic.num_items": 200, "data.synthetic.num_categories": 8,
         "data.impressions.num_requests": 500, "model.embed_dim": 8, "model.expert_hidden": [32],
         "model.tower_hidden": [16], "train.epochs": 1, "train.batch_size": 128,
         "baselines.gbdt": False} if SMALL else {}
run = ecomjax.train(CONFIGS / "ranker_synthetic.yaml",
                    overrides={"workdir": str(RUNS / "ranker_synthetic"), "train.progress": False, **small})
test, bayes = run.metrics["test"], run.metrics["bayes"]
print(f"CTR AUC {test['click']['auc']:.4f} (Bayes ceiling {bayes['click']['auc']:.4f}), "
      f"dwell RMSE (log s) {test['dwell']['rmse_log']:.4f}, "
      f"list NDCG@10 by satisfaction {test['satisfaction']['ndcg@10_true']:.4f}")

# %% [markdown]
# ## 2. ESMM against CVR trained on clicked impressions only
#
# Both scored over every test impression against the counterfactual "would buy if clicked"
# label: the clicked-only model never saw the impressions it is asked about.

# %%
rows = {"ESMM (pCTR x pCVR)": test["cvr"], "clicked impressions only": run.metrics["baselines"]["cvr_clicked_only"]["cvr"],
        "Bayes (true probabilities)": bayes["cvr"]}
print(f"{'CVR model':28s} {'AUC (all)':>10s} {'log loss (all)':>15s} {'calibration':>12s}")
for name, r in rows.items():
    print(f"{name:28s} {r['auc_all']:10.4f} {r['log_loss_all']:15.4f} {r.get('calibration_all', 0.0):+12.1%}")

# %% [markdown]
# ## 3. Calibration against the truth
#
# `run.score` scores each candidate as if shown first (what re-ranking a list can change), so its
# click probability is compared with the generator's top-position click probability, and its
# purchase-given-click probability with the true one, in ten bins of the prediction.

# %%
import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

data, splits = load_impressions(run.config)
rows_test = splits["test"]
scores = run.score({"categorical": data.categorical[rows_test], "numeric": data.numeric[rows_test],
                    "sequences": data.sequences[rows_test]})
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (head, truth) in zip(axes, (("click", data.truth["p_click_top"]), ("cvr", data.truth["p_cvr"])), strict=True):
    predicted, true = np.asarray(scores[head]), truth[rows_test]
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
    means = [(predicted[bins == b].mean(), true[bins == b].mean()) for b in range(10) if (bins == b).any()]
    ax.plot(*zip(*means, strict=True), marker="o", label="ranker")
    top = max(max(m) for m in means)
    ax.plot([0, top], [0, top], "k--", lw=1, label="perfect")
    ax.set(xlabel=f"predicted {head} probability", ylabel="true probability", title=head)
    ax.legend()
plt.tight_layout()
plt.show()
