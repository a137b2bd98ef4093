# %% [markdown]
# # 02 · Product search: relevance models, ANN retrieval, re-ranking
#
# The Home Depot product-search relevance data (Kaggle 2016: human grades 1-3 for query,
# product pairs). One `task: relevance` run trains a bi-encoder (adapters on frozen MiniLM), a
# fine-tuned MiniLM cross-encoder and LightGBM re-rankers, and builds an HNSW index over the
# catalogue; `run.search` answers a query through them, with the time of every stage.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/02_product_search.ipynb)
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
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import ecomjax
from ecomjax.data.files import resolve_data_path
from ecomjax.errors import MissingFileError

print("JAX", jax.__version__, "on", jax.devices())
SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs"))

# %% [markdown]
# ## 1. The data
#
# Home Depot's file is on Kaggle only (its terms need a login): `ecomjax data download homedepot`
# prints the steps (the Kaggle CLI command and where the file goes). Once `train.csv` is there,
# the config finds it.

# %%
try:
    train_csv = resolve_data_path("homedepot/train.csv")
except MissingFileError:
    subprocess.run([sys.executable, "-m", "ecomjax", "data", "download", "homedepot"])
    raise
print(train_csv)

# %% [markdown]
# ## 2. Train
#
# The full config trains both encoders and both re-rankers (on a TPU a few minutes; on 2 CPU
# cores about 40, most of it the cross-encoder). The small setting uses the first 800 judged
# pairs and no cross-encoder.

# %%
overrides = {"workdir": str(RUNS / "search_homedepot"), "bi_encoder.train.progress": False,
             "cross_encoder.train.progress": False}
if SMALL:
    small_csv = RUNS / "homedepot_800.csv"
    small_csv.parent.mkdir(parents=True, exist_ok=True)
    small_csv.write_text("".join(train_csv.read_text(encoding="utf-8").splitlines(keepends=True)[:801]),
                         encoding="utf-8")
    overrides.update({"data.path": str(small_csv), "cross_encoder.enabled": False,
                      "bi_encoder.train.epochs": 2, "gbdt.max_rounds": 50})
run = ecomjax.train(CONFIGS / "search_homedepot.yaml", overrides=overrides)

models = [m for m in ("mean_predictor", "bm25", "cosine", "bi_encoder", "cross_encoder", "gbdt_fast", "gbdt")
          if m in run.metrics]
print(f"{'model':16s} {'test RMSE':>10s} {'test NDCG@10':>13s}")
for m in models:
    row = run.metrics[m]
    print(f"{m:16s} {row.get('rmse', float('nan')):10.4f} {row.get('ndcg@10', float('nan')):13.4f}")

# %% [markdown]
# ## 3. Search
#
# Retrieval: the query's MiniLM vector against the HNSW index (FAISS); re-ranking: the fast
# GBDT over lexical, BM25, both cosines and the product prior.

# %%
searcher = ecomjax.load(run.workdir)
result = searcher.search("cordless drill", k=5)
for pid, title, score in zip(result.product_ids, result.titles, result.scores, strict=True):
    print(f"{score:6.3f}  {pid}  {title}")

# %% [markdown]
# ## 4. Latency per stage
#
# Warm calls, one query at a time (the first call compiles). `ecomjax serve` batches concurrent
# queries; see docs/results/serving.md.

# %%
import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

queries = ["cordless drill", "led light bulb", "garden hose", "deck screws", "white paint", "door knob"]
for q in queries:
    searcher.search(q, k=10)
timings = [searcher.search(q, k=10).timings_ms for q in queries * (2 if SMALL else 20)]
stages = [s for s in timings[0] if s != "total"]
p50 = {s: float(np.percentile([t[s] for t in timings], 50)) for s in stages}
print({s: round(v, 2) for s, v in p50.items()}, "total p50", round(float(np.median([t["total"] for t in timings])), 2))
plt.figure(figsize=(6, 3))
plt.barh(list(p50), list(p50.values()))
plt.xlabel("p50 ms per query")
plt.title(f"run.search on {jax.default_backend()}")
plt.tight_layout()
plt.show()
