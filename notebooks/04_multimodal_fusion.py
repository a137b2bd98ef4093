# %% [markdown]
# # 04 · Multimodal fusion: product titles and photos
#
# The Fashion Product Images catalogue (Myntra: a photo, a title and attributes per product).
# Frozen encoders (MiniLM for titles, EfficientNet-Lite0 for photos) are computed once and
# cached; small heads learn on top. Colour words are removed from the titles, so colour can
# only come from the photo. Two tasks: predicting attributes, and retrieving products for an
# attribute query ("men black tshirt"), each with title only, photo only and fused.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/04_multimodal_fusion.ipynb)
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
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax

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
# The catalogue is on Kaggle only: `ecomjax data download fashion` prints the steps.

# %%
try:
    catalogue = resolve_data_path("fashion-products", directory=True)
except MissingFileError:
    subprocess.run([sys.executable, "-m", "ecomjax", "data", "download", "fashion"])
    raise
print(catalogue)

# %% [markdown]
# ## 2. Attributes from title, photo and both
#
# The first run computes the frozen features of the catalogue (minutes on a CPU, seconds on a
# TPU) and caches them; the others read the cache.

# %%
common = {"train.progress": False, **({"data.max_products": 300, "data.min_count": 5} if SMALL else {})}
attributes = {}
for mode in ("text", "image", "concat"):
    extra = {"train.epochs": 3} if SMALL else {}
    run = ecomjax.train(CONFIGS / "fashion_attributes.yaml", overrides={
        **common, **extra, "model.fusion": mode, "workdir": str(RUNS / f"fashion_attributes_{mode}")})
    attributes[mode] = {k: v for k, v in run.metrics["test"].items() if isinstance(v, float)}
names = sorted(attributes["text"])
print(f"{'fusion':10s}" + "".join(f"{n:>14s}" for n in names))
for mode, accuracy in attributes.items():
    print(f"{mode:10s}" + "".join(f"{accuracy[n]:14.4f}" for n in names))

# %% [markdown]
# ## 3. Retrieval for attribute queries
#
# A query tower and a fused product tower, trained on generated attribute queries; the photos of
# the top products for a query.

# %%
retrieval_small = {"data.train_queries": 300, "data.paraphrases": 1, "data.eval_queries": 60,
                   "train.epochs": 2} if SMALL else {}
found = ecomjax.train(CONFIGS / "fashion_retrieval.yaml", overrides={
    **common, **retrieval_small, "model.fusion": "concat", "workdir": str(RUNS / "fashion_retrieval")})
print("test NDCG@10", round(found.metrics["test"]["ndcg@10"], 4))

import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

retriever = ecomjax.load(found.workdir)
queries = ["men black tshirt", "women blue jeans", "red casual shoes"]
with zipfile.ZipFile(catalogue / "images-128.zip") as photos:
    known = {Path(n).stem: n for n in photos.namelist()}
    fig, axes = plt.subplots(len(queries), 5, figsize=(10, 2.3 * len(queries)))
    for row, query in zip(axes, queries, strict=True):
        result = retriever.search(query, k=5)
        for ax, product in zip(row, result.product_ids, strict=True):
            name = known.get(str(product))
            if name is not None:
                ax.imshow(Image.open(io.BytesIO(photos.read(name))))
            ax.set_title(str(product), fontsize=8)
            ax.axis("off")
        row[0].text(-10, 64, query, ha="right", va="center", fontsize=10)
plt.tight_layout()
plt.show()
