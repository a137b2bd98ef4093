# %% [markdown]
# # 05 · Efficiency: int8, pruning, LoRA and distillation
#
# Four ways to make a trained recommender cheaper, each one config section on the same run
# format, each measured on the same test users: post-training int8 quantization (qwix),
# magnitude pruning during training, LoRA adapters on a finished run, and a small student
# distilled from it. The trade-off plot puts test NDCG@10 against model bytes. The measured
# Beauty and Home Depot tables are in docs/results/efficiency.md.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/05_efficiency.ipynb)
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
from ecomjax.efficiency.quantize import model_bytes

print("JAX", jax.__version__, "on", jax.devices())
SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs")) / "efficiency"
base = {"train.progress": False, "eval.sampled_negatives": 0,
        **({"data.synthetic.num_users": 400, "data.synthetic.num_items": 200, "train.epochs": 2,
            "model.hidden_size": 16, "model.ffn_size": 32, "train.batch_size": 8} if SMALL else {})}


def train(name, **overrides):
    return ecomjax.train(CONFIGS / "quickstart.yaml", overrides={**base, "workdir": str(RUNS / name), **overrides})


# %% [markdown]
# ## 1. The float model, and int8 after training
#
# `efficiency.quantize.weights: int8` quantizes the kept model after training (dense layers int8
# per output channel, activations int8 per row, the item table one scale per row), evaluates it
# on the same batches and saves it beside the float one.

# %%
teacher = train("float", **{"efficiency.quantize.weights": "int8"})
quantized = teacher.metrics["quantized"]
float_bytes = quantized["bytes"]["float_model"]
points = {"float32": (teacher.metrics["test"]["ndcg@10"], float_bytes),
          "int8": (quantized["test"]["ndcg@10"], quantized["bytes"]["quantized_model"])}

# %% [markdown]
# ## 2. Pruning, LoRA, distillation
#
# - pruning: half of every targeted weight matrix set to zero on Zhu & Gupta's schedule (same
#   bytes dense; what it buys is a sparse or shrunk export);
# - LoRA: rank-8 adapters trained on the finished float run, merged back to serve;
# - distillation: a model a quarter as wide, trained against the float run's scores.

# %%
pruned = train("pruned", **{"efficiency.prune.sparsity": 0.5})
points["pruned 50%"] = (pruned.metrics["test"]["ndcg@10"], float_bytes)
lora = train("lora", **{"train.init_from": str(teacher.workdir), "efficiency.lora.rank": 8,
                        "train.epochs": 1})
points["LoRA r=8 (merged)"] = (lora.metrics["test"]["ndcg@10"], float_bytes)
width = max(8, (16 if SMALL else teacher.config.model.hidden_size) // 4)
student = train("student", **{"model.hidden_size": width, "model.ffn_size": 2 * width,
                              "efficiency.distill.teacher": str(teacher.workdir)})
student_bytes = sum(model_bytes(ecomjax.load(student.workdir).model).values())  # as the float model's count
points["distilled student"] = (student.metrics["test"]["ndcg@10"], student_bytes)
for name, (ndcg, size) in points.items():
    print(f"{name:20s} NDCG@10 {ndcg:.4f}  bytes {size / float_bytes:.2f}x")

# %% [markdown]
# ## 3. The trade-off

# %%
import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

plt.figure(figsize=(6, 4))
for n, (name, (ndcg, size)) in enumerate(points.items()):
    plt.scatter(size / float_bytes, ndcg, s=60, label=name, color=plt.get_cmap("tab10")(n))
plt.xlabel("model bytes (x float32)")
plt.ylabel("test NDCG@10")
plt.legend(fontsize=8, loc="lower right")
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()
