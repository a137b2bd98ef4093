# %% [markdown]
# # 06 · Scaling: the same config on a device mesh
#
# Every model trains under `jax.jit` with explicit shardings on a `data x model` mesh named in
# the config (`mesh.data`, `mesh.model`): batches split along `data`; item tables split by rows
# along `model` (vocab-parallel), transformer blocks by heads and hidden units. On a multi-chip
# runtime (a TPU v5e-8 or v6e-8) this notebook trains on the real chips; on a single-chip or CPU
# runtime it says so and runs the same training as a rehearsal on 8 virtual CPU devices.

# %% [markdown] tags=["header"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ecomjax/ecomjax/blob/main/notebooks/06_scaling_on_tpu.ipynb)
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
import textwrap
from pathlib import Path

import jax

SMALL = os.environ.get("ECOMJAX_NOTEBOOK_SMALL") == "1"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if (p / "quickstart.yaml").exists())
RUNS = Path(os.environ.get("ECOMJAX_NOTEBOOK_RUNS", "runs"))
devices = jax.devices()
print(f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})")

# %% [markdown]
# ## 1. Train on a mesh and look at each device's share
#
# The script below trains the quickstart recommender with `mesh.model=2` (the rest of the
# devices on `data`) and reports, per device, the bytes of the parameters it holds: with the
# item table split over 2 devices each holds half of it.

# %%
SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    from flax import nnx
    import ecomjax

    workdir, small = sys.argv[1], sys.argv[2] == "1"
    overrides = {"workdir": workdir, "train.progress": False, "mesh.data": -1, "mesh.model": 2,
                 "train.batch_size": 16}
    if small:
        overrides.update({"data.synthetic.num_users": 300, "data.synthetic.num_items": 256, "train.epochs": 1,
                          "model.hidden_size": 16, "model.ffn_size": 32, "eval.sampled_negatives": 0})
    run = ecomjax.train(sys.argv[3], overrides=overrides)
    per_device, table = {}, {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(run.model, nnx.Param)):
        for shard in leaf.addressable_shards:
            name = str(shard.device)
            per_device[name] = per_device.get(name, 0) + shard.data.nbytes
            if "item_embedding" in jax.tree_util.keystr(path):
                table[name] = table.get(name, 0) + shard.data.nbytes
    print(json.dumps({"mesh": dict(run.metrics["mesh"]), "test_ndcg@10": run.metrics["test"]["ndcg@10"],
                      "param_bytes_per_device": per_device, "item_table_bytes_per_device": table}))
''')
environment = dict(os.environ)
if len(devices) > 1:
    print("multi-device runtime: training on the real devices")
else:
    print("a single device: rehearsing on 8 virtual CPU devices (JAX_NUM_CPU_DEVICES=8); on a v5e-8 or v6e-8 "
          "runtime the same cell trains on the chips")
    environment.update({"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8"})
done = subprocess.run([sys.executable, "-c", SCRIPT, str(RUNS / "scaling"), "1" if SMALL else "0",
                       str(CONFIGS / "quickstart.yaml")], env=environment, capture_output=True, text=True)
if done.returncode:
    raise RuntimeError(done.stderr[-2000:])
report = json.loads(done.stdout.strip().splitlines()[-1])
print("mesh", report["mesh"], "test NDCG@10", round(report["test_ndcg@10"], 4))

# %%
import matplotlib

if SMALL:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

names = list(report["param_bytes_per_device"])
plt.figure(figsize=(8, 3))
plt.bar(names, [report["param_bytes_per_device"][n] / 1024 for n in names], label="all parameters")
plt.bar(names, [report["item_table_bytes_per_device"].get(n, 0) / 1024 for n in names], label="item table")
plt.ylabel("KiB per device")
plt.xticks(rotation=45, ha="right", fontsize=7)
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The measured memory per device of a 10M-item table over mesh shapes is in
# docs/results/scaling.md; multi-host runs (a TPU slice, several GPU hosts) are in
# docs/guide/scaling.md.
