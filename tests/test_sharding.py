"""Sharded training: mesh from config, logical-axis rules, vocab-parallel tables, multi-process,
checkpoints across meshes.

Device counts are fixed when JAX starts, so the multi-device checks run training in fresh
processes with ``JAX_NUM_CPU_DEVICES`` set (8 CPU devices, or 2 processes x 4) and compare their
``history.jsonl`` losses and restored parameters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ecomjax.config import ConfigError, MeshConfig, load_config
from ecomjax.train.sharding import mesh_shape, spec_for

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "data.synthetic.num_users=300", "data.synthetic.num_items=120", "data.synthetic.num_categories=8",
    "data.max_len=12", "model.hidden_size=16", "model.ffn_size=32", "model.num_layers=1",
    "train.batch_size=8", "train.epochs=2", "train.warmup_steps=5", "train.progress=false",
    "eval.batch_size=64", "mesh.data=4", "mesh.model=2",
]


def _env(devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def _train(workdir: Path, overrides: list[str], devices: int, config: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "ecomjax.cli", "train", *([config] if config else []),
           f"workdir={workdir}", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(devices), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "metrics.json").read_text())


def _losses(workdir: Path) -> np.ndarray:
    lines = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in lines if "loss" in r])


def _worker(devices: int, *args: str) -> dict:
    done = subprocess.run([sys.executable, "tests/mesh_worker.py", *args], cwd=ROOT, env=_env(devices),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


# --- Mesh shape and rules ------------------------------------------------------------------------


def test_mesh_shape_fills_the_rest_and_rejects_bad_products():
    assert mesh_shape(MeshConfig(data=-1, model=2), 8) == (4, 2)
    assert mesh_shape(MeshConfig(data=2, model=-1), 8) == (2, 4)
    assert mesh_shape(MeshConfig(), 1) == (1, 1)
    with pytest.raises(ValueError, match="product must equal the device count"):
        mesh_shape(MeshConfig(data=4, model=4), 8)
    with pytest.raises(ValueError, match="do not divide"):
        mesh_shape(MeshConfig(data=-1, model=3), 8)
    with pytest.raises(ValueError, match="both be -1"):
        mesh_shape(MeshConfig(data=-1, model=-1), 8)


def test_logical_rules_map_axes_and_keep_indivisible_dimensions_whole():
    mesh = jax.sharding.AbstractMesh((4, 2), ("data", "model"))
    rules = MeshConfig().rules
    assert tuple(spec_for(("vocab", "embed"), (12160, 64), rules, mesh)) == ("model", None)
    assert tuple(spec_for(("embed", "mlp"), (64, 256), rules, mesh)) == (None, "model")
    assert tuple(spec_for(("embed", "heads"), (64, 3), rules, mesh)) == (None, None)  # 3 % 2
    assert tuple(spec_for(("mlp", "heads"), (8, 8), rules, mesh)) == ("model", None)  # axis used once
    assert tuple(spec_for(None, (5,), rules, mesh)) == ()
    with pytest.raises(ValueError, match=r"'experts' has no entry in mesh\.rules"):
        spec_for(("experts", "embed"), (4, 64), rules, mesh)


def test_mesh_rules_in_config_override_defaults_and_validate_axes():
    config = load_config(None, ["mesh.rules.vocab=null", "mesh.rules.heads=data"])
    assert config.mesh.rules["vocab"] is None and config.mesh.rules["heads"] == "data"
    assert config.mesh.rules["mlp"] == "model"  # untouched defaults stay
    # a misspelt logical axis would silently shard nothing: refused, listing the known ones
    with pytest.raises(ConfigError, match=r"mesh\.rules: unknown logical axis 'vocabb'; known axes: .*'vocab'"):
        load_config(None, ["mesh.rules.vocabb=model"])
    with pytest.raises(ConfigError, match=r"mesh.rules.vocab: 'modle' is not allowed.*\['data', 'model'\].*null"):
        load_config(None, ["mesh.rules.vocab=modle"])
    with pytest.raises(ConfigError, match=r"mesh\.model: 0 is out of range"):
        load_config(None, ["mesh.model=0"])


def test_mesh_that_does_not_fit_the_devices_fails_naming_the_keys(tmp_path):
    with pytest.raises(ValueError, match=r"mesh.data=2 x mesh.model=2 = 4 devices, but 1 are available"):
        from ecomjax.train.loop import train

        train(load_config(None, [*TINY[:-2], "mesh.data=2", "mesh.model=2", f"workdir={tmp_path}"]))


# --- Multi-device behaviour (fresh processes) ----------------------------------------------------


def test_beauty_20_steps_on_a_4x2_mesh_match_one_device(tmp_path, beauty_path):
    """The issue's acceptance check: same per-step losses, float32, relative difference <= 1e-4."""
    common = ["train.max_steps=20", "model.compute_dtype=float32", "train.progress=false",
              f"data.path={beauty_path}"]
    one = _train(tmp_path / "one", [*common, "mesh.data=1", "mesh.model=1"], 1, "configs/sasrec_beauty.yaml")
    eight = _train(tmp_path / "eight", [*common, "mesh.data=4", "mesh.model=2"], 8, "configs/sasrec_beauty.yaml")
    assert one["steps"] == eight["steps"] == 20 and eight["stop_reason"] == "max_steps"
    assert eight["mesh"] == {"data": 4, "model": 2} and eight["num_devices"] == 8
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert len(a) == len(b) == 20
    np.testing.assert_allclose(b, a, rtol=1e-4)
    assert a[-1] < a[0]  # and it is learning, not a constant


@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax"])
def test_item_table_is_vocab_parallel_and_never_gathered(loss):
    """Beauty-sized table on a 4x2 mesh: each device holds 1/2 of it (and of its Adam moments),
    and the compiled step has no all-gather that rebuilds it (12,160 padded rows)."""
    info = _worker(8, "table", "4", "2", loss, "12101")
    assert info["table_shape"] == [12160, 64] and info["table_spec"] == ["model", "None"]
    assert info["table_bytes_per_device"] * 2 == info["table_bytes"]
    assert info["mu_bytes_per_device"] == info["nu_bytes_per_device"] == info["table_bytes_per_device"]
    assert not [shape for shape in info["all_gather_shapes"] if "12160" in shape], info["all_gather_shapes"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_and_resume_and_reshard_on_eight_devices(tmp_path):
    """One 8-device run is the reference for three checks: two processes x 4 devices give the same
    losses; an interrupted 8-device run resumes exactly; its checkpoint restores bit-identically
    onto one device and onto other meshes (and a one-device checkpoint onto 4x2)."""
    reference = _train(tmp_path / "ref", TINY, 8)
    ref_losses = _losses(tmp_path / "ref")
    assert reference["num_devices"] == 8 and reference["steps"] == len(ref_losses) > 20

    # Two processes, four CPU devices each, joined through jax.distributed on localhost.
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ecomjax.cli", "train", f"workdir={tmp_path / 'multi'}", *TINY,
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(rank)],
            cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert multi["num_processes"] == 2 and multi["num_devices"] == 8
    np.testing.assert_allclose(_losses(tmp_path / "multi"), ref_losses, rtol=1e-4)
    assert multi["test"]["ndcg@10"] == pytest.approx(reference["test"]["ndcg@10"], rel=1e-3)

    # Interrupt after 13 steps (mid-epoch) and resume, all on 8 devices: exactly the reference.
    part = _train(tmp_path / "resumed", [*TINY, "train.max_steps=13"], 8)
    assert part["steps"] == 13 and part["stop_reason"] == "max_steps"
    resumed = _train(tmp_path / "resumed", TINY, 8)
    np.testing.assert_array_equal(_losses(tmp_path / "resumed"), ref_losses)
    assert resumed["test"] == reference["test"] and resumed["valid"] == reference["valid"]

    # The 8-device (4x2) checkpoint onto 1 device and onto 1x8: bit-identical parameters.
    saved = _worker(8, "dump", str(tmp_path / "ref"), str(tmp_path / "ref_4x2.npz"))
    assert saved["mesh"] == {"data": 4, "model": 2} and saved["table_shard_shape"] == [64, 16]  # 128 rows / 2
    single = _worker(1, "dump", str(tmp_path / "ref"), str(tmp_path / "ref_1.npz"), "1", "1")
    assert single["devices"] == 1 and single["table_shard_shape"] == [128, 16]
    wide = _worker(8, "dump", str(tmp_path / "ref"), str(tmp_path / "ref_1x8.npz"), "1", "8")
    assert wide["mesh"] == {"data": 1, "model": 8} and wide["table_shard_shape"] == [16, 16]
    _assert_same_arrays(tmp_path / "ref_4x2.npz", tmp_path / "ref_1.npz")
    _assert_same_arrays(tmp_path / "ref_4x2.npz", tmp_path / "ref_1x8.npz")

    # A one-device checkpoint onto a 4x2 mesh.
    _train(tmp_path / "one", [*TINY[:-2], "mesh.data=1", "mesh.model=1", "train.max_steps=9"], 1)
    _worker(1, "dump", str(tmp_path / "one"), str(tmp_path / "one_1.npz"))
    onto = _worker(8, "dump", str(tmp_path / "one"), str(tmp_path / "one_4x2.npz"), "4", "2")
    assert onto["mesh"] == {"data": 4, "model": 2} and onto["step"] == 9
    _assert_same_arrays(tmp_path / "one_1.npz", tmp_path / "one_4x2.npz")


def _assert_same_arrays(a: Path, b: Path) -> None:
    with np.load(a) as left, np.load(b) as right:
        assert sorted(left.files) == sorted(right.files) and len(left.files) > 10
        for name in left.files:
            np.testing.assert_array_equal(left[name], right[name], err_msg=name)
