"""The Task protocol: the only code that knows what a model is trained for.

A **task** reads its data, says which models it trains and how they are judged, and turns the
trained models into the run's metrics and into an inference call; the one loop
(``ecomjax.train.loop``) does everything else for every task alike: the mesh, state initialised
into its shardings, the jitted update step, early stopping, checkpoints, exact resume, the NaN
guard, progress, ``history.jsonl``, callbacks.

A task trains one or more **stages**: gradient-trained models, each with its own optimizer
section, checkpoints (``WORKDIR/checkpoints/<stage>``) and history lines. Most tasks have one
(``model``); a search run trains a bi-encoder and a cross-encoder, a ranker run may train a
clicked-only CVR baseline beside its main model. Non-gradient steps (BM25, LightGBM re-rankers,
rule baselines) are plain code in ``Task.run`` between ``trainer.fit`` calls.

A stage must be buildable from the config and the task's ``spec`` alone (what ``prepare``
returned and the run wrote to ``model.json``: catalogue size, vocabularies, feature shapes), so
that ``ecomjax.load`` rebuilds it without the dataset. Its batches are a pure function of
``(seed, epoch)`` with random access (``batches(epoch)[step]``), which is what makes mid-epoch
resume exact; each batch is the global batch as numpy arrays (leading axis = examples), and the
loop places each process's rows on its devices.

The shape follows RecML's ``JaxTask`` and big_vision's trainers: the task describes, the
trainer trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import jax
import numpy as np
import optax
from flax import nnx

from ecomjax.config import RunConfig, TrainConfig

if TYPE_CHECKING:
    from ecomjax.run import Run
    from ecomjax.train.loop import Trainer


class Batches(Protocol):
    """One epoch of batches with random access (``grain.MapDataset`` is one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, step: int) -> Mapping[str, np.ndarray]: ...


@dataclass
class Trained:
    """A stage after the loop: its model at the kept (best validation) parameters, and what the
    loop recorded (best epoch, stop reason, steps, timings, the validation curve)."""

    name: str
    model: nnx.Module
    summary: dict[str, Any]


class Stage(ABC):
    """One gradient-trained model of a run: everything the loop needs from it."""

    name: str = "model"  # checkpoints/<name>, the "stage" of its history lines
    train: TrainConfig  # optimizer, schedule, stopping, checkpoints
    monitor: str  # key of evaluate(model, "valid") that selects the kept parameters
    higher_is_better: bool = True

    @abstractmethod
    def build(self) -> nnx.Module:
        """The module with its initial parameters (seeded), logical axes declared on them."""

    def trainable(self) -> nnx.filterlib.Filter:
        """Which variables train (the rest are carried as fixed ``buffers``): every ``Param`` by
        default; LoRA trains its adapters only, a frozen backbone nothing of itself."""
        return nnx.Param

    @abstractmethod
    def batches(self, epoch: int) -> Batches:
        """The epoch's global batches, a pure function of ``(seed, epoch)``."""

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.batches(epoch))

    @abstractmethod
    def loss(self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(scalar loss, {name: scalar})`` of one batch, traced once inside the jitted step;
        ``rng`` is this step's key (dropout, sampling)."""

    def flops_loss(self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array):
        """The same arithmetic as ``loss`` written without loops, for XLA's cost analysis
        (which counts a loop body once); by default ``loss`` itself."""
        return self.loss(model, batch, rng)

    @abstractmethod
    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        """Metrics of ``split`` (``valid`` during training; the task decides what else)."""

    def update_transforms(self, total_steps: int) -> list[optax.GradientTransformation]:
        """Transformations applied to the optimizer's updates (pruning masks)."""
        return []

    def selectable_from(self, total_steps: int) -> int:
        """The first step whose parameters may be kept as best (pruning: once the target
        sparsity holds)."""
        return 0

    def warm_up(self, model: nnx.Module) -> None:
        """Compile evaluation ahead of the first epoch, so timings are execution only."""
        return None

    def check_init_from(self, run: Run) -> None:
        """Refuse a ``train.init_from`` run whose parameters mean something else (other items)."""
        return None


class Task(ABC):
    """What a run trains for; see the module doc. ``Config`` is the task's config schema."""

    name: ClassVar[str]
    Config: ClassVar[type[RunConfig]]

    def __init__(self, config: RunConfig):
        self.config = config
        self.workdir = Path(config.workdir)
        self.mesh: jax.sharding.Mesh | None = None  # set by the loop before prepare()

    @abstractmethod
    def describe_data(self) -> dict[str, Any]:
        """What the data of the config holds (``ecomjax data describe CONFIG``): counts, splits."""

    @abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Read the data and build the splits; return the spec ``stages`` needs (JSON)."""

    def vocabulary(self) -> dict[str, np.ndarray]:
        """Id maps saved beside the run (``vocab.npz``, after ``prepare``): what inference needs
        to speak the data's own ids (original item ids, product ids)."""
        return {}

    def data_report(self) -> dict[str, Any] | None:
        """What the data preparation read and what each of its steps left (``data_report.json``,
        after ``prepare``); None for tasks whose sources have no preparation steps."""
        return None

    def artifacts(self) -> list[str]:
        """Files of the workdir (besides config, model.json and the models) that inference
        reads: ``export`` copies them."""
        return ["vocab.npz"]

    @abstractmethod
    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        """The gradient-trained models, buildable from the config and ``spec`` alone."""

    def run(self, trainer: Trainer, spec: dict[str, Any]) -> dict[str, Any]:
        """Train every stage and report; tasks with non-gradient steps override this."""
        trained = {stage.name: trainer.fit(stage) for stage in self.stages(spec)}
        return self.report({name: t.model for name, t in trained.items()})

    @abstractmethod
    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        """Final metrics (validation and test) of the trained models, after ``prepare``: what
        ``metrics.json`` holds and what ``ecomjax eval`` recomputes."""

    # Keys of ``report`` computed on the test split: dropped from metrics.json when the run has
    # ``report_test: false`` (hyperparameter trials), so that no choice among runs can see them.
    test_keys: ClassVar[tuple[str, ...]] = ("test",)

    def objective(self) -> tuple[str, bool]:
        """``(validation metric, higher is better)`` that a hyperparameter search selects on,
        known from the config alone (the study's direction is fixed before its first trial).
        Every registered task names one; usually its main stage's early-stopping monitor."""
        raise NotImplementedError(f"task {self.name!r} declares no tuning objective")

    def objective_value(self, metrics: dict[str, Any]) -> float:
        """The objective of a finished run: the main stage's validation monitor at its kept
        (best) epoch, read from the loop's summary in ``metrics.json``."""
        name, _ = self.objective()
        curve = {point["epoch"]: point for point in metrics.get("valid_curve", [])}
        best = curve.get(metrics.get("best_epoch"))
        if best is None or name not in best:
            raise KeyError(f"metrics.json has no validation {name!r} at the best epoch")
        return float(best[name])

    def summary(self, metrics: dict[str, Any]) -> str:
        """What the CLI prints after training or evaluation."""
        return "\n".join(f"{split:5s}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()
                                                   if isinstance(v, float))
                         for split in ("valid", "test") if split in metrics)

    def inference(self, run: Run) -> Any:
        """The object behind ``Run.recommend`` / ``score`` / ``search`` for this task."""
        raise NotImplementedError(f"task {self.name!r} has no inference call")
