"""The training loop for next-item recommenders: one readable function, in sections.

mesh -> data -> model and state -> compiled update step -> loop (evaluate, stop early,
checkpoint) -> final test evaluation -> ``metrics.json``. The update step is a pure function of
``(state, batch)`` compiled once with explicit shardings and the state donated; dropout keys
derive from the step number, so a resumed run replays exactly the computation of an
uninterrupted one.
"""

from __future__ import annotations

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
import optax
import yaml
from flax import nnx
from tqdm.auto import tqdm

from ecomjax.bench.flops import compiled_flops
from ecomjax.config import Config, save_config
from ecomjax.data import load_sequences
from ecomjax.data.pipeline import NextItemTrainData, eval_arrays, eval_batches
from ecomjax.data.split import leave_one_out
from ecomjax.eval.sequential import evaluate_split, make_evaluator, warm_up_evaluator
from ecomjax.models import build_sequential_model
from ecomjax.tasks.next_item import direct_softmax, item_log_prior, next_item_loss
from ecomjax.train.checkpoint import RunCheckpoints, abstract_like
from ecomjax.train.mesh import batch_sharding, make_mesh, replicated
from ecomjax.train.optimizer import make_optimizer

# Keys that may differ between an interrupted run and its resumption.
_RESUME_FREE_KEYS = {("train", "max_steps"), ("train", "progress"), ("train", "resume")}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step."""


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: nnx.Module
    workdir: Path


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    for section, key in _RESUME_FREE_KEYS:
        config[section].pop(key, None)
    return config


class _History:
    """``history.jsonl``: one line per optimizer step and per evaluation."""

    def __init__(self, path: Path, keep_until_step: int):
        self.path = path
        kept = []
        if path.exists() and keep_until_step > 0:
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= keep_until_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.handle = path.open("a", buffering=1)  # line-buffered: readable while training

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.handle.close()


def train_next_item(config: Config) -> TrainResult:
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prior_config = workdir / "config.yaml"

    # --- Mesh ----------------------------------------------------------------------------------
    mesh = make_mesh()
    data_devices = mesh.shape["data"]
    if config.train.batch_size % data_devices:
        raise ValueError(f"train.batch_size={config.train.batch_size} must divide over {data_devices} devices")

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
    eval_sets = {
        name: eval_batches(
            eval_arrays(split, getattr(split, name), config.data.max_len, config.eval.batch_size,
                        config.eval.sampled_negatives, config.seed),
            config.eval.batch_size,
        )
        for name in ("valid", "test")
    }
    item_counts = np.bincount(dataset.items, minlength=dataset.num_items + 1)

    # --- Model and state -----------------------------------------------------------------------
    model = build_sequential_model(config.model, dataset.num_items, config.data.max_len, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tx, schedule = make_optimizer(config.train, total_steps)
    repl, batch_sh = replicated(mesh), batch_sharding(mesh)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    state = jax.device_put(state, repl)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    log_prior = jnp.asarray(item_log_prior(item_counts, config.loss.sampler))
    base_key = jax.random.key(config.seed, impl=config.train.prng_impl)

    # --- Update step ---------------------------------------------------------------------------
    def train_step(state, batch):
        key = jax.random.fold_in(base_key, state["step"])
        dropout_key, loss_key = jax.random.split(key)

        def loss_fn(params):
            net = nnx.merge(graphdef, params)
            hidden = net.encode(
                batch["items"], batch["positions"], batch["segments"],
                deterministic=False, rngs=nnx.Rngs(dropout=dropout_key),
            )
            return next_item_loss(hidden, batch["targets"], net.item_table(), config.loss, loss_key, log_prior)

        (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads)}

    batch_shardings = {key: batch_sh for key in ("items", "targets", "segments", "positions")}
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_shardings),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )
    evaluator = make_evaluator(graphdef, config.eval, sampled=config.eval.sampled_negatives > 0)

    def evaluate(params, which: str) -> dict[str, Any]:
        return evaluate_split(evaluator, params, eval_sets[which])

    # --- Resume --------------------------------------------------------------------------------
    checkpoints = RunCheckpoints(workdir / "checkpoints")
    best_params = jax.tree.map(jnp.copy, state["params"])
    meta = {"epoch": 0, "best": None, "best_epoch": -1, "bad_evals": 0,
            "finished": False, "train_seconds": 0.0, "eval_seconds": 0.0, "compile_seconds": 0.0,
            "valid_history": []}
    if config.train.resume and checkpoints.latest_step() is not None:
        if prior_config.exists():
            old = yaml.safe_load(prior_config.read_text())
            if _comparable(old) != _comparable(config.to_dict()):
                raise ValueError(
                    f"{workdir} holds a run with a different config; use another workdir or train.resume=false"
                )
        state, best_params, meta = checkpoints.restore(abstract_like(state), abstract_like(best_params))
    elif checkpoints.latest_step() is not None:
        for step in checkpoints.manager.all_steps():
            checkpoints.manager.delete(step)
    save_config(config, prior_config)
    global_step = int(state["step"])
    history = _History(workdir / "history.jsonl", keep_until_step=global_step)

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
            batches = train_data.batches(epoch)
            start = int(state["step"]) - int(cumulative[epoch])
            if compiled_step is None:
                t0 = time.perf_counter()
                compiled_step = step_fn.lower(state, batches[0]).compile()
                with direct_softmax():  # same arithmetic, no loop: XLA counts every matmul
                    meta["flops_per_step"] = compiled_flops(
                        jax.jit(lambda s, b: train_step(s, b)).lower(state, batches[0])
                    )
                warm_up_evaluator(evaluator, state["params"], eval_sets["valid"] + eval_sets["test"])
                meta["compile_seconds"] = time.perf_counter() - t0
            bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{config.train.epochs}",
                       disable=not config.train.progress, leave=False, dynamic_ncols=True)
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
                if config.train.progress:
                    tqdm.write(f"epoch {epoch + 1}: valid {config.eval.monitor} {score:.4f} "
                               f"({meta['train_seconds']:.0f}s training)")
                if meta["best"] is None or score > meta["best"]:
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
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    model = nnx.merge(graphdef, final_params)
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
