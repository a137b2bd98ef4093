"""Runs never lose work or report a wrong number: workdir identity, replacing a run, changed
data, verified checkpoints with fallback, a full disk during a save, history across kills.

Each test names the safeguard it exercises; every one fails when that safeguard is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import real_data
from flax import nnx

import ecomjax
from ecomjax.errors import (
    ChangedDataError,
    CheckpointError,
    EcomjaxError,
    NonFiniteError,
    WorkdirError,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = {"data.max_len": 12, "model.hidden_size": 16, "model.ffn_size": 32, "model.num_layers": 1,
        "train.batch_size": 32, "train.epochs": 2, "train.progress": False, "eval.batch_size": 256,
        "eval.sampled_negatives": 0}


@pytest.fixture
def beauty_slice(tmp_path) -> Path:
    """300 users of the real Beauty file, in a file the test may edit."""
    path = tmp_path / "data" / "beauty_300.txt"
    path.parent.mkdir()
    path.write_text("".join(real_data("amazon-beauty/Beauty.txt").read_text().splitlines(keepends=True)[:300]))
    return path


def _train(workdir, data: Path, **extra):
    return ecomjax.train(ROOT / "configs/sasrec_beauty.yaml",
                         overrides={**TINY, "data.path": str(data), "workdir": str(workdir), **extra})


def _steps(workdir: Path, stage: str = "model") -> list[int]:
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints" / stage).iterdir() if p.name.isdigit())


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ecomjax.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


# --- workdir identity ------------------------------------------------------------------------


def test_eval_from_another_directory_scores_the_run_and_never_trains(tmp_path, beauty_slice, monkeypatch):
    """A relative workdir and a relative data path, evaluated from elsewhere: run.json's resolved
    paths are used, nothing is trained or written outside WORKDIR/eval."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(beauty_slice, home / "beauty.txt")
    monkeypatch.chdir(home)
    trained = _train("runs/x", Path("beauty.txt")).metrics
    record = json.loads((home / "runs/x/run.json").read_text())
    assert record["workdir"] == str(home / "runs/x") and record["inputs"]["data.path"]["path"] == str(home / "beauty.txt")
    assert "workdir: runs/x" in (home / "runs/x/config.yaml").read_text()  # as the user wrote it
    before = {p: p.stat().st_mtime_ns for p in (home / "runs/x").rglob("*") if p.is_file()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = ecomjax.evaluate(home / "runs/x")
    assert again["test"]["ndcg@10"] == pytest.approx(trained["test"]["ndcg@10"], abs=1e-6)
    assert not list(elsewhere.iterdir())  # no ./runs/x trained here
    after = {p: p.stat().st_mtime_ns for p in (home / "runs/x").rglob("*") if p.is_file() and "eval" not in p.parts}
    assert after == before


@pytest.mark.parametrize("spelling", ["./runs/x", "runs/x/", "ABSOLUTE"])
def test_the_same_workdir_spelt_another_way_resumes(tmp_path, beauty_slice, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    first = _train("runs/x", beauty_slice, **{"train.max_steps": 5}).metrics
    assert first["stop_reason"] == "max_steps"
    spelt = str(tmp_path / "runs/x") if spelling == "ABSOLUTE" else spelling
    resumed = _train(spelt, beauty_slice).metrics
    assert resumed["stop_reason"] == "epochs" and resumed["steps"] > 5


def test_a_workdir_that_is_a_file_or_holds_another_task_is_refused(tmp_path, beauty_slice):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(WorkdirError, match="is a file"):
        _train(tmp_path / "file", beauty_slice)
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "model.json").write_text(json.dumps({"task": "ranker", "spec": {}}))
    with pytest.raises(WorkdirError, match="holds a ranker run and this config trains next_item"):
        _train(tmp_path / "ranker", beauty_slice)


# --- replacing a run ---------------------------------------------------------------------------


def test_replacing_a_run_keeps_the_old_one_until_the_new_one_has_a_checkpoint(tmp_path, beauty_slice):
    workdir = tmp_path / "run"
    _train(workdir, beauty_slice)
    kept = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(WorkdirError) as refused:
        _train(workdir, beauty_slice, **{"model.hidden_size": 8})
    assert "model.hidden_size: 16 -> 8" in str(refused.value) and "train.resume=false" in str(refused.value)
    # the replacement diverges at its first step, before any checkpoint: the old run comes back
    with pytest.raises(NonFiniteError):
        _train(workdir, beauty_slice, **{"train.resume": False, "train.learning_rate": 1e30,
                                         "train.warmup_steps": 0, "train.grad_clip_norm": 0.0})
    assert {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == kept
    assert ecomjax.load(workdir).metrics["test"]["ndcg@10"] >= 0
    # a replacement that trains: the old run is gone once the new one saved, and it is the new config
    new = _train(workdir, beauty_slice, **{"train.resume": False, "model.hidden_size": 8})
    assert not (workdir / ".replaced").exists() and new.config.model.hidden_size == 8
    assert ecomjax.load(workdir).config.model.hidden_size == 8


def test_a_replacement_killed_before_its_first_checkpoint_gives_the_old_run_back(tmp_path, beauty_slice):
    """A process killed between setting the old run aside and the first save leaves both; the
    next start restores the old run (and, with a checkpoint, would keep the new one)."""
    from ecomjax.train.workdir import set_aside

    workdir = tmp_path / "run"
    first = _train(workdir, beauty_slice).metrics
    set_aside(workdir)
    (workdir / "config.yaml").write_text("workdir: half-written\n")  # the killed replacement's files
    resumed = _train(workdir, beauty_slice).metrics  # same config: the old, finished run is found
    assert not (workdir / ".replaced").exists() and resumed["test"] == first["test"]


# --- changed data --------------------------------------------------------------------------------


def test_changed_data_is_refused_on_eval_and_resume_unless_allowed(tmp_path, beauty_slice):
    workdir, partial = tmp_path / "run", tmp_path / "partial"
    trained = _train(workdir, beauty_slice).metrics
    _train(partial, beauty_slice, **{"train.max_steps": 3})
    good = (workdir / "metrics.json").read_text()
    lines = beauty_slice.read_text().splitlines(keepends=True)
    os.utime(beauty_slice)  # touched, same bytes: still the same file
    assert ecomjax.evaluate(workdir)["test"]["ndcg@10"] == pytest.approx(trained["test"]["ndcg@10"], abs=1e-6)
    beauty_slice.write_text("".join([*lines, lines[0].replace(lines[0].split()[0], "999999", 1)]))  # grown
    with pytest.raises(ChangedDataError, match=rf"data.path: {beauty_slice} has \d+ bytes"):
        ecomjax.evaluate(workdir)
    assert (workdir / "metrics.json").read_text() == good
    same_size = "".join([lines[1], lines[0], *lines[2:]])  # edited in place, same length
    beauty_slice.write_text(same_size)
    with pytest.raises(ChangedDataError, match="sha256 differs"):
        ecomjax.evaluate(workdir)
    with pytest.raises(ChangedDataError, match=str(beauty_slice)):
        _train(partial, beauty_slice)  # resuming onto the edited file
    allowed = ecomjax.evaluate(workdir, **{"eval.allow_changed_data": True})
    assert allowed["changed_data"] and str(beauty_slice) in allowed["changed_data"][0]
    assert (workdir / "metrics.json").read_text() == good


# --- verified checkpoints ------------------------------------------------------------------------


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "checksums.json"),
               key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_step(tmp_path, beauty_slice, damage, capfd):
    workdir = tmp_path / "run"
    _train(workdir, beauty_slice, **{"train.checkpoint_every_steps": 3, "train.max_steps": 7})
    older, latest = _steps(workdir)[-2:]
    reference = tmp_path / "reference"
    shutil.copytree(workdir, reference)
    shutil.rmtree(reference / "checkpoints" / "model" / str(latest))
    target = _largest_file(workdir / "checkpoints" / "model" / str(latest))
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        target.unlink()
    capfd.readouterr()
    loaded = ecomjax.load(workdir)
    warned = capfd.readouterr().err
    assert f"{workdir / 'checkpoints' / 'model' / str(latest)} skipped" in warned
    want = ecomjax.load(reference)  # what the previous step holds
    for a, b in zip(jax_leaves(loaded.model), jax_leaves(want.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # resuming continues from the good step and ends where an uninterrupted run ends
    resumed = _train(workdir, beauty_slice, **{"train.checkpoint_every_steps": 3}).metrics
    full = _train(tmp_path / "full", beauty_slice, **{"train.checkpoint_every_steps": 3}).metrics
    assert resumed["test"] == full["test"] and older < latest


def jax_leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_no_good_checkpoint_is_one_error_naming_every_step(tmp_path, beauty_slice):
    workdir = tmp_path / "run"
    _train(workdir, beauty_slice, **{"train.checkpoint_every_steps": 3, "train.max_steps": 7})
    for step in _steps(workdir):
        target = _largest_file(workdir / "checkpoints" / "model" / str(step))
        target.write_bytes(target.read_bytes()[::-1])
    with pytest.raises(CheckpointError, match=r"no good checkpoint \(step \d+: .*corrupt.*; step \d+: "):
        ecomjax.load(workdir)
    done = _cli("eval", str(workdir), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") <= 4 and "Traceback" not in done.stderr, done.stderr
    assert "no good checkpoint" in done.stderr.splitlines()[-1]


def test_an_unreadable_step_without_checksums_falls_back_too(tmp_path, beauty_slice, capfd):
    """Steps written before checksums existed cannot be verified; one orbax cannot read is
    skipped like a corrupt one."""
    workdir = tmp_path / "run"
    _train(workdir, beauty_slice, **{"train.checkpoint_every_steps": 3, "train.max_steps": 7})
    older, latest = _steps(workdir)[-2:]
    for step in (older, latest):
        (workdir / "checkpoints" / "model" / str(step) / "checksums.json").unlink()
    target = workdir / "checkpoints" / "model" / str(latest) / "kept" / "_METADATA"
    target.write_text(target.read_text()[:40])
    capfd.readouterr()
    ecomjax.load(workdir)
    warned = capfd.readouterr().err
    assert "has no checksums" in warned and f"{latest} skipped: orbax cannot read it" in warned


def test_nan_parameters_are_an_error_not_a_hit_rate(tmp_path, beauty_slice):
    """NaN scores compare false, so an unguarded ranking counts them as hits at rank 0."""
    from ecomjax.eval.full_ranking import full_ranking_metrics

    run = _train(tmp_path / "run", beauty_slice)
    table = nnx.state(run.model, nnx.Param)
    poisoned = jax.tree.map(lambda x: x * np.nan, table)
    nnx.update(run.model, poisoned)
    with pytest.raises(NonFiniteError, match="users have NaN or infinite scores"):
        run.task.stages(run.spec)[0].evaluate(run.model, "test")
    vectors = np.full((4, 3), np.nan, np.float32)
    with pytest.raises(NonFiniteError, match="evaluation rows 0-3"):
        full_ranking_metrics(vectors, np.ones((10, 3), np.float32), np.zeros(4), np.zeros((4, 1)))


# --- a full disk during a save ---------------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_during_a_save_leaves_the_previous_step_as_latest(tmp_path, beauty_slice):
    """A real full disk (a small tmpfs in a private mount namespace): the save fails with one
    line naming the step, no partial step is left, and the run resumes from the previous one."""
    if not _can_mount_tmpfs():
        if os.environ.get("CI"):
            pytest.fail("unshare -rm cannot mount a tmpfs here: the full-disk test needs it")
        pytest.skip("unshare -rm cannot mount a tmpfs here")
    # measure one run's first checkpoint, then size the disk for about one and a half
    probe = tmp_path / "probe"
    _train(probe, beauty_slice, **{"train.checkpoint_every_steps": 3, "train.max_steps": 3})
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    step = sum(p.stat().st_size for p in (probe / "checkpoints/model/3").rglob("*") if p.is_file())
    size_kb = (used + step // 2) // 1024 + 64
    mount = tmp_path / "disk"
    mount.mkdir()
    overrides = {**TINY, "data.path": str(beauty_slice), "train.checkpoint_every_steps": 3}
    command = " ".join([sys.executable, "-m", "ecomjax.cli", "train", "configs/sasrec_beauty.yaml",
                        *(f"{k}={json.dumps(v)}" for k, v in overrides.items()), f"workdir={mount}/run"])
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mount} && {command}; code=$?; "
              f"cp -r {mount}/run {tmp_path}/after; exit $code")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "could not be written" in last and "Traceback" not in done.stderr, done.stderr[-3000:]
    after = tmp_path / "after"
    steps = _steps(after)
    from ecomjax.train.checkpoint import verify_step

    assert steps and all(verify_step(after / "checkpoints/model" / str(s)) is None for s in steps)
    resumed = _train(after, beauty_slice, **{"train.checkpoint_every_steps": 3}).metrics
    assert not [p for p in (after / "checkpoints/model").iterdir() if "tmp" in p.name]
    full = _train(tmp_path / "full", beauty_slice, **{"train.checkpoint_every_steps": 3}).metrics
    assert resumed["test"] == full["test"]


def test_a_save_that_fails_after_orbax_committed_removes_the_step(tmp_path, beauty_slice, monkeypatch):
    """The disk fills while the checksums are written: orbax's step is complete but unverified,
    so it is removed rather than left as the latest step."""
    import errno

    from ecomjax.train import checkpoint

    real, calls = checkpoint._write_checksums, []

    def fill_up(step_dir):
        calls.append(step_dir.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(step_dir)

    monkeypatch.setattr(checkpoint, "_write_checksums", fill_up)
    workdir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"step 6 could not be written \(No space left on device\); kept: steps \[3\]"):
        _train(workdir, beauty_slice, **{"train.checkpoint_every_steps": 3})
    assert _steps(workdir) == [3]


# --- history across interruptions -----------------------------------------------------------------


def test_a_partial_last_history_line_does_not_stop_a_resume(tmp_path, beauty_slice):
    workdir = tmp_path / "run"
    _train(workdir, beauty_slice, **{"train.max_steps": 4})
    with (workdir / "history.jsonl").open("a") as handle:
        handle.write('{"stage": "model", "step": 5, "lo')  # killed mid-write
    resumed = _train(workdir, beauty_slice)
    steps = [json.loads(line)["step"] for line in (workdir / "history.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, resumed.metrics["steps"] + 1))


def test_errors_are_ecomjax_errors_with_one_line(tmp_path, beauty_slice):
    done = _cli("train", "configs/sasrec_beauty.yaml", f"data.path={beauty_slice}", f"workdir={beauty_slice}",
                cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "is a file, not a directory" in done.stderr
    assert issubclass(WorkdirError, EcomjaxError) and issubclass(ChangedDataError, ValueError)


def test_ctrl_c_saves_the_step_and_its_history_line(tmp_path, beauty_slice):
    """Interrupted (SIGINT) mid-epoch: exit 130 with one line, and the history holds every step
    up to the checkpoint it saved, so the resumed run's history has no hole."""
    import signal
    import time

    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "ecomjax.cli", "train", str(ROOT / "configs/sasrec_beauty.yaml"),
            *(f"{k}={json.dumps(v)}" for k, v in {**TINY, "train.epochs": 4}.items()),
            f"data.path={beauty_slice}", f"workdir={workdir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    history = workdir / "history.jsonl"
    deadline = time.monotonic() + 300
    while not (history.is_file() and history.read_text().count('"loss"') >= 4):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert process.stderr.read().strip().splitlines()[-1].startswith("ecomjax: interrupted; checkpoint saved")
    saved = max(_steps(workdir))
    logged = [json.loads(line)["step"] for line in history.read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, saved + 1))
    finished = _train(workdir, beauty_slice, **{"train.epochs": 4})
    full = _train(tmp_path / "full", beauty_slice, **{"train.epochs": 4})
    assert finished.metrics["test"] == full.metrics["test"]
