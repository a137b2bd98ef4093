"""The training loop for next-item recommenders: one readable function, in sections.

mesh -> data -> model and state -> compiled update step -> loop (evaluate, stop early,
checkpoint) -> final test evaluation -> ``metrics.json``. The update step is a pure function of
``(state, batch)`` compiled once with explicit shardings and the state donated; dropout keys
derive from the step number, so a resumed run replays exactly the computation of an
uninterrupted one.

Placement comes from the config: ``mesh.data`` x ``mesh.model`` devices, parameters and Adam
moments laid out by ``mesh.rules`` (``ecomjax.train.sharding``), initialised straight into those
shardings. Batches are split along ``data``; in a multi-process run each process feeds only its
own rows. The arithmetic does not depend on the mesh: the same seed gives the same losses on one
device or eight, and a checkpoint written on one mesh resumes on another.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ecomjax.bench.flops import compiled_flops
from ecomjax.config import Config, load_config, save_config
from ecomjax.data import load_sequences
from ecomjax.data.item_text import model_item_features
from ecomjax.data.pipeline import NextItemTrainData, eval_arrays, eval_batches
from ecomjax.data.split import leave_one_out
from ecomjax.efficiency.prune import pruning_end_step, sparsity_report
from ecomjax.efficiency.quantize import (
    model_bytes,
    quantize_model,
    quantized_layer_bytes,
    recommender_example_inputs,
    save_quantized,
)
from ecomjax.eval.sequential import evaluate_split, make_evaluator, warm_up_evaluator
from ecomjax.models.paths import flat_params
from ecomjax.tasks.next_item import direct_softmax, item_log_prior
from ecomjax.train.checkpoint import RunCheckpoints, abstract_like
from ecomjax.train.distributed import is_primary
from ecomjax.train.sharding import (
    batch_sharding,
    make_mesh,
    process_rows,
    replicated,
    to_global,
)
from ecomjax.train.step import (
    Teacher,
    abstract_next_item_state,
    build_next_item_step,
    init_next_item_state,
)

# Keys that may differ between an interrupted run and its resumption (the mesh may change: a
# checkpoint restores onto any mesh, and the arithmetic does not depend on it).
_RESUME_FREE_KEYS = {
    ("train", "max_steps"), ("train", "progress"), ("train", "resume"),
    ("mesh", "data"), ("mesh", "model"), ("mesh", "rules"),
    # post-training: a finished run may be quantized afterwards (quantization-aware training may not)
    *(("efficiency", "quantize", key) for key in ("weights", "activations", "tables", "min_table_rows", "module_path")),
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step."""


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: nnx.Module
    workdir: Path


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    for *sections, key in _RESUME_FREE_KEYS:
        node = config
        for section in sections:
            node = node.get(section, {})
        node.pop(key, None)
    return config


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: dotted keys, as overrides name them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class _History:
    """``history.jsonl``: one line per optimizer step and per evaluation (process 0 writes it)."""

    def __init__(self, path: Path, keep_until_step: int, enabled: bool = True):
        self.path = path
        self.handle = None
        if not enabled:
            return
        kept = []
        if path.exists() and keep_until_step > 0:
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= keep_until_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.handle = path.open("a", buffering=1)  # line-buffered: readable while training

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def train_next_item(config: Config) -> TrainResult:
    """Train (or resume, or re-evaluate a finished run in) ``config.workdir``; see the module doc."""
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        return _train(config, mesh)


def _train(config: Config, mesh: jax.sharding.Mesh) -> TrainResult:
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prior_config = workdir / "config.yaml"
    primary = is_primary()

    # --- Mesh ----------------------------------------------------------------------------------
    data_devices = mesh.shape["data"]
    for key in ("train", "eval"):
        size = getattr(config, key).batch_size
        if size % data_devices:
            raise ValueError(
                f"{key}.batch_size={size} does not split over mesh.data={data_devices} devices; "
                f"use a multiple of {data_devices}"
            )
    batch_sh = batch_sharding(mesh)

    # --- Data ----------------------------------------------------------------------------------
    dataset = load_sequences(config.data)
    split = leave_one_out(dataset)
    train_data = NextItemTrainData(split, config.data.max_len, config.train.batch_size, config.seed)
    if train_data.num_tokens == 0:
        raise ValueError(f"{dataset.name}: no training positions (every user has fewer than 2 items)")
    steps_per_epoch = [train_data.steps_in_epoch(e) for e in range(config.train.epochs)]
    total_steps = sum(steps_per_epoch)
    ks = config.eval.ks
    if config.eval.monitor not in {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks} | {"mrr"}:
        raise ValueError(f"eval.monitor={config.eval.monitor!r} is not computed with eval.ks={ks}")
    # Evaluation batches live on the devices for the whole run, split along ``data`` like training.
    eval_rows = process_rows(batch_sh, (config.eval.batch_size,))
    eval_sets = {}
    for name in ("valid", "test"):
        host_batches = eval_batches(
            eval_arrays(split, getattr(split, name), config.data.max_len, config.eval.batch_size,
                        config.eval.sampled_negatives, config.seed),
            config.eval.batch_size,
        )
        eval_sets[name] = (
            [to_global({k: v[eval_rows] for k, v in b.items()}, batch_sh, config.eval.batch_size) for b in host_batches],
            int(sum(b["valid"].sum() for b in host_batches)),
        )
    train_rows = process_rows(batch_sh, (config.train.batch_size,))

    def device_batch(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return to_global(batch, batch_sh, config.train.batch_size)
    item_counts = split.train_item_counts()  # the sampler prior knows no validation or test target

    # --- Model, state and update step ------------------------------------------------------------
    num_items = dataset.num_items
    log_prior = jnp.asarray(item_log_prior(item_counts, config.loss.sampler))
    item_text = model_item_features(config.model, dataset)
    if item_text is not None and primary and len(item_text.missing):
        print(f"model.item_text: {len(item_text.missing)} of {num_items} items have no title; "
              "their text vector is zero")
    teacher = _load_teacher(config, dataset, mesh)
    trainer = build_next_item_step(config, num_items, total_steps, log_prior, mesh,
                                   *(() if item_text is None else (item_text.features, item_text.words)),
                                   teacher=teacher, item_counts=item_counts)
    graphdef, schedule, step_fn = trainer.graphdef, trainer.schedule, trainer.step_fn
    train_step = trainer.train_step
    checkpoints = RunCheckpoints(workdir / "checkpoints")
    resuming = config.train.resume and checkpoints.latest_step() is not None
    state = init_next_item_state(trainer, None if resuming else _initial_params(config, dataset, mesh, trainer))
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    evaluator = make_evaluator(graphdef, config.eval, sampled=config.eval.sampled_negatives > 0)

    def evaluate(params, which: str) -> dict[str, Any]:
        batches, users = eval_sets[which]
        return evaluate_split(evaluator, (params, state["buffers"]), batches, users)

    # --- Resume --------------------------------------------------------------------------------
    best_params = jax.tree.map(jnp.copy, state["params"])
    meta = {"epoch": 0, "best": None, "best_epoch": -1, "bad_evals": 0,
            "finished": False, "train_seconds": 0.0, "eval_seconds": 0.0, "compile_seconds": 0.0,
            "valid_history": []}
    if resuming:
        if prior_config.exists():
            # read through the schema: keys added to it since the run started take their
            # defaults (which leave behaviour as it was), so an older run still resumes
            old, new = _flat(_comparable(load_config(prior_config).to_dict())), _flat(_comparable(config.to_dict()))
            if old != new:
                differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                raise ValueError(f"{workdir} holds a run with a different config ({', '.join(differ)}); "
                                 "use another workdir or train.resume=false")
        state, best_params, meta = checkpoints.restore(abstract_like(state), abstract_like(best_params))
    elif checkpoints.latest_step() is not None:
        for step in checkpoints.manager.all_steps():
            checkpoints.manager.delete(step)
    if primary:
        save_config(config, prior_config)
    global_step = int(state["step"])
    history = _History(workdir / "history.jsonl", keep_until_step=global_step, enabled=primary)

    prune_end = pruning_end_step(config.efficiency.prune, total_steps)
    # The position inside an epoch is derived from the step counter, so it always matches the state.
    cumulative = np.concatenate([[0], np.cumsum(steps_per_epoch)])

    def save_checkpoint():
        checkpoints.save(int(state["step"]), state, best_params, meta)

    # Ctrl-C / SIGTERM set a flag checked between steps, so the saved state is always consistent.
    stop_signal = {"received": False}

    def on_signal(signum, frame):
        if stop_signal["received"]:
            raise KeyboardInterrupt
        stop_signal["received"] = True

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    # --- Loop ----------------------------------------------------------------------------------
    stop_reason = "finished" if meta["finished"] else None
    max_steps = config.train.max_steps or math.inf
    compiled_step = None
    try:
        while stop_reason is None and meta["epoch"] < config.train.epochs:
            epoch = meta["epoch"]
            batches = train_data.batches(epoch, rows=train_rows).map(device_batch)
            start = int(state["step"]) - int(cumulative[epoch])
            if compiled_step is None:
                t0 = time.perf_counter()
                compiled_step = step_fn.lower(state, batches[0]).compile()
                with direct_softmax():  # same arithmetic, no loop: XLA counts every matmul
                    meta["flops_per_step"] = compiled_flops(
                        jax.jit(lambda s, b: train_step(s, b)).lower(state, batches[0])
                    )
                warm_up_evaluator(evaluator, (state["params"], state["buffers"]), eval_sets["valid"][0] + eval_sets["test"][0])
                meta["compile_seconds"] = time.perf_counter() - t0
            bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{config.train.epochs}",
                       disable=not (config.train.progress and primary), leave=False, dynamic_ncols=True)
            t_epoch = time.perf_counter()
            pending = None
            for index in range(start, len(batches)):
                if global_step >= max_steps:
                    stop_reason = "max_steps"
                    break
                if stop_signal["received"]:
                    raise KeyboardInterrupt
                state, step_metrics = compiled_step(state, batches[index])
                if pending is not None:  # fetch the previous step's loss while this one runs
                    _log_step(history, bar, *pending, schedule)
                pending = (global_step, epoch, step_metrics)
                global_step += 1
                if config.train.checkpoint_every_steps and global_step % config.train.checkpoint_every_steps == 0:
                    _log_step(history, bar, *pending, schedule)
                    pending = None
                    save_checkpoint()
            if pending is not None:
                _log_step(history, bar, *pending, schedule)
            jax.block_until_ready(state)
            meta["train_seconds"] += time.perf_counter() - t_epoch
            bar.close()
            if stop_reason == "max_steps":
                save_checkpoint()
                break
            meta["epoch"] = epoch + 1
            if (epoch + 1) % config.train.eval_every_epochs == 0 or epoch + 1 == config.train.epochs:
                t0 = time.perf_counter()
                valid = evaluate(state["params"], "valid")
                meta["eval_seconds"] += time.perf_counter() - t0
                score = valid[config.eval.monitor]
                history.write({"step": global_step, "epoch": epoch + 1, "valid": valid,
                               "train_seconds": round(meta["train_seconds"], 3),
                               "eval_seconds": round(meta["eval_seconds"], 3)})
                meta["valid_history"].append({"epoch": epoch + 1, config.eval.monitor: score,
                                              "train_seconds": round(meta["train_seconds"], 3),
                                              "eval_seconds": round(meta["eval_seconds"], 3)})
                if config.train.progress and primary:
                    tqdm.write(f"epoch {epoch + 1}: valid {config.eval.monitor} {score:.4f} "
                               f"({meta['train_seconds']:.0f}s training)")
                if global_step < prune_end:
                    pass  # the target sparsity does not hold yet: not a model to keep or compare
                elif meta["best"] is None or score > meta["best"]:
                    meta["best"], meta["best_epoch"], meta["bad_evals"] = score, epoch + 1, 0
                    best_params = jax.tree.map(jnp.copy, state["params"])
                else:
                    meta["bad_evals"] += 1
                    if meta["bad_evals"] >= config.train.early_stopping_patience:
                        stop_reason = "early_stopping"
            if stop_reason is None and meta["epoch"] >= config.train.epochs:
                stop_reason = "epochs"
            meta["finished"] = stop_reason in ("early_stopping", "epochs")
            save_checkpoint()
    except KeyboardInterrupt:
        jax.block_until_ready(state)
        save_checkpoint()
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        history.close()
        checkpoints.close()

    # --- Final evaluation ----------------------------------------------------------------------
    final_params = best_params if meta["best"] is not None else state["params"]
    t0 = time.perf_counter()
    metrics = {
        "valid": evaluate(final_params, "valid"),
        "test": evaluate(final_params, "test"),
    }
    meta["eval_seconds"] += time.perf_counter() - t0
    epochs_run = meta["epoch"]
    metrics.update({
        "model": config.model.name,
        "loss": config.loss.name,
        "stop_reason": stop_reason or "finished",
        "best_epoch": meta["best_epoch"],
        "epochs_run": epochs_run,
        "steps": int(state["step"]),
        "train_seconds": round(meta["train_seconds"], 3),
        "eval_seconds": round(meta["eval_seconds"], 3),
        "compile_seconds": round(meta["compile_seconds"], 3),
        "seconds_per_epoch": round(meta["train_seconds"] / max(epochs_run, 1), 3),
        "flops_per_step": meta.get("flops_per_step"),  # XLA cost analysis of the compiled step
        "valid_curve": meta["valid_history"],
        "num_params": int(num_params),
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "mesh": {"data": mesh.shape["data"], "model": mesh.shape["model"]},
        "data": {
            "name": dataset.name,
            "users": dataset.num_users,
            "items": dataset.num_items,
            "interactions": len(dataset.items),
            "train_positions": train_data.num_tokens,
            "users_not_evaluated": split.num_train_only,
        },
        "protocol": {
            "split": "leave-one-out (last item test, second-to-last validation)",
            "ranking": "full catalogue",
            "exclude_history": config.eval.exclude_history,
            "ties": "pessimistic (items scoring equal to the target rank before it)",
            "ks": list(ks),
            "sampled": (
                f"{config.eval.sampled_negatives} uniform negatives not in the history"
                if config.eval.sampled_negatives else None
            ),
            "selection": f"best validation {config.eval.monitor} over evaluated epochs",
        },
    })
    model = nnx.merge(graphdef, final_params, state["buffers"])
    if config.efficiency.prune.sparsity > 0:
        metrics["pruning"] = {"method": config.efficiency.prune.method, "target": config.efficiency.prune.sparsity,
                              **sparsity_report(final_params, config.efficiency.prune.targets)}
    if config.efficiency.quantize.weights != "none":
        metrics["quantized"] = _quantized_metrics(config, model, eval_sets, mesh, workdir if primary else None)
    if primary:
        (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(metrics=metrics, model=model, workdir=workdir)


def _log_step(history: _History, bar, step: int, epoch: int, step_metrics, schedule) -> None:
    values = jax.device_get(step_metrics)
    loss = float(values["loss"])
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (epoch {epoch + 1}); lower train.learning_rate or check the data"
        )
    history.write({
        "step": step + 1, "epoch": epoch + 1, "loss": loss,
        "grad_norm": float(values["grad_norm"]), "lr": float(schedule(step)),
        "tokens": int(values["tokens"]),
    })
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.update(1)


def _quantized_metrics(config: Config, model: nnx.Module, eval_sets, mesh: jax.sharding.Mesh,
                       workdir: Path | None) -> dict[str, Any]:
    """Quantize the selected model (``efficiency.quantize``), evaluate it on the same batches as
    the float model, report bytes, and save it under ``workdir/quantized`` for serving."""
    if jax.process_count() > 1:
        raise ValueError("efficiency.quantize runs in a single process; quantize the saved run afterwards")
    qconfig = config.efficiency.quantize
    quantized = quantize_model(model, qconfig, *recommender_example_inputs(config.data.max_len), method="encode")
    evaluator = make_evaluator(nnx.graphdef(quantized), config.eval, sampled=config.eval.sampled_negatives > 0)
    qstate = jax.device_put(nnx.state(quantized), replicated(mesh))
    result = {which: evaluate_split(evaluator, (qstate,), *eval_sets[which]) for which in ("valid", "test")}
    layers = quantized_layer_bytes(model, quantized)
    result["bytes"] = {"float_model": sum(model_bytes(model).values()), "quantized_model": sum(model_bytes(quantized).values()),
                       "quantized_layers_float": sum(v["float"] for v in layers.values()),
                       "quantized_layers_int8": sum(v["quantized"] for v in layers.values()), "layers": layers}
    result["config"] = dataclasses.asdict(qconfig)
    if workdir is not None:
        save_quantized(quantized, workdir / "quantized")
    return result


def _restore_same_items(key: str, source: str, dataset, mesh: jax.sharding.Mesh):
    """The finished run ``source`` (named by config ``key``) on this run's mesh; it must have been
    trained on the same items (ids and count): its item rows mean nothing otherwise."""
    from ecomjax.train.restore import restore_run  # restore builds steps itself: import late

    if not (Path(source) / "config.yaml").is_file():
        raise FileNotFoundError(f"{key}={source!r} is not a run directory (no config.yaml)")
    run = restore_run(source, data=mesh.shape["data"], model=mesh.shape["model"])
    source_data = load_sequences(run.config.data)
    if source_data.num_items != dataset.num_items or not np.array_equal(source_data.item_ids, dataset.item_ids):
        raise ValueError(f"{key}={source!r} was trained on {source_data.name} ({source_data.num_items} items), "
                         f"this run on {dataset.name} ({dataset.num_items} items): it must know the same items")
    return run


def _initial_params(config: Config, dataset, mesh: jax.sharding.Mesh, trainer) -> Any:
    """``train.init_from``: the finished run's best parameters, checked leaf by leaf against the
    shapes this run's model needs; ``None`` (fresh initialisation) when unset."""
    source = config.train.init_from
    if not source:
        return None
    run = _restore_same_items("train.init_from", source, dataset, mesh)
    wanted = abstract_next_item_state(trainer)["params"]
    have, need = flat_params(run.best_params), flat_params(wanted)
    if config.efficiency.lora.rank:  # the adapters are new: they start fresh (B = 0: at the base model)
        need = {k: v for k, v in need.items() if "_lora_" not in k}
    if have.keys() != need.keys():
        raise ValueError(f"train.init_from={source!r}: its model has other parameters than this run's "
                         f"(only there: {sorted(have.keys() - need.keys())[:3]}, only here: "
                         f"{sorted(need.keys() - have.keys())[:3]}); use the same model section")
    for key, leaf in need.items():
        if have[key].shape != leaf.shape or have[key].dtype != leaf.dtype:
            raise ValueError(f"train.init_from={source!r}: {key} is {have[key].dtype}{list(have[key].shape)} "
                             f"there, {leaf.dtype}{list(leaf.shape)} here; use the same model section")
    return have


def _load_teacher(config: Config, dataset, mesh: jax.sharding.Mesh) -> Teacher | None:
    """The ``efficiency.distill.teacher`` run's best model on this run's mesh (same items)."""
    source = config.efficiency.distill.teacher
    if not source:
        return None
    run = _restore_same_items("efficiency.distill.teacher", source, dataset, mesh)
    if run.config.data.max_len < config.data.max_len:
        raise ValueError(f"the teacher reads {run.config.data.max_len} positions, this run {config.data.max_len}: "
                         "raise the teacher's data.max_len or lower this run's")
    return Teacher(run.graphdef, run.best_params, run.state["buffers"])
