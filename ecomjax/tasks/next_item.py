"""Next-item recommendation (``task: next_item``, the default): SASRec or GRU4Rec on item sequences.

Data: the synthetic shop or a ``user item item ...`` file, split leave-one-out (last item test,
second-to-last validation); training packs several users' sequences into each row of
``max_len`` tokens and learns every position's next item. Evaluation ranks the whole catalogue
for every user (items earlier in the history excluded, ``eval.exclude_history``), on batches
that stay on the devices for the whole run. Options on top: item titles fused into the item
representation (``model.item_fusion``), int8 quantization after or during training, pruning,
distillation from a finished run, LoRA adapters on a finished run (``efficiency.*``).

``model.json`` holds the catalogue size and the shapes of the fixed item features;
``vocab.npz`` the original item id of every dense id, so ``run.recommend`` speaks the ids of the
data file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.config import (
    DistillConfig,
    EvalConfig,
    LoraSection,
    PruneConfig,
    QuantizeConfig,
    RunConfig,
    TrainConfig,
)
from ecomjax.data import DataConfig, load_sequences
from ecomjax.data.item_text import model_item_features
from ecomjax.data.pipeline import NextItemTrainData, eval_arrays, eval_batches
from ecomjax.data.split import make_split
from ecomjax.errors import InputError, MissingFileError
from ecomjax.models.axes import padded_vocab
from ecomjax.models.sequential import SequentialModelConfig, build_sequential_model
from ecomjax.tasks.base import Stage, Task
from ecomjax.tasks.next_item_losses import LossConfig, item_log_prior, next_item_loss
from ecomjax.train.sharding import batch_sharding, process_rows, to_global

RECOMMENDER_LORA_TARGETS = r".*blocks/\d+/(attention/(qkv|out)|feed_forward/(up|down))"


@dataclass
class NextItemEvalConfig(EvalConfig):
    """Leave-one-out ranking evaluation (``ecomjax.eval.sequential``)."""

    exclude_history: bool = True  # earlier items of the user get -inf before ranking (S3-Rec protocol)
    sampled_negatives: int = 0  # >0 adds the sampled protocol (e.g. 100 uniform negatives) beside full ranking

    RANGES: ClassVar = {**EvalConfig.RANGES, "sampled_negatives": (lambda v: v >= 0, "an integer >= 0")}


@dataclass
class EfficiencyConfig:
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # adapters on the finished run of train.init_from (a new market, a new season, a user
    # segment: one small set of adapters each, one shared base)
    lora: LoraSection = field(default_factory=lambda: LoraSection(targets=RECOMMENDER_LORA_TARGETS))


@dataclass
class NextItemConfig(RunConfig):
    """A next-item run: what to train on, what to train, how, and where to write."""

    task: Literal["next_item"] = "next_item"
    workdir: str = "runs/quickstart"
    data: DataConfig = field(default_factory=DataConfig)
    model: SequentialModelConfig = field(default_factory=SequentialModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: NextItemEvalConfig = field(default_factory=NextItemEvalConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)


class NextItemTask(Task):
    name = "next_item"
    Config = NextItemConfig
    config: NextItemConfig

    def objective(self) -> tuple[str, bool]:
        return self.config.eval.monitor, True

    def __init__(self, config: NextItemConfig):
        super().__init__(config)
        lora, prune, quantize = config.efficiency.lora, config.efficiency.prune, config.efficiency.quantize
        if lora.rank and not config.train.init_from:
            raise InputError("efficiency.lora adapts a trained model: set train.init_from to a finished run's workdir")
        if lora.rank and prune.sparsity > 0:
            raise InputError("efficiency.lora and efficiency.prune do not combine: the base weights are frozen")
        if quantize.qat and quantize.weights == "none":
            raise InputError("efficiency.quantize.qat=true trains for an int8 export: set efficiency.quantize.weights=int8")
        self.dataset = None  # set by prepare(): a loaded run builds its stage from the spec alone
        self.teacher = None
        self.quantized = None

    # --- data ------------------------------------------------------------------------------------

    def describe_data(self) -> dict[str, Any]:
        ds = load_sequences(self.config.data)
        lengths = ds.lengths
        return {"name": ds.name, "users": ds.num_users, "items": ds.num_items,
                "interactions": int(lengths.sum()), "mean_length": round(float(lengths.mean()), 2),
                "max_length": int(lengths.max()), "preparation": ds.report}

    def prepare(self) -> dict[str, Any]:
        config = self.config
        self.dataset = dataset = load_sequences(config.data)
        self.split = split = make_split(dataset, config.data.split)
        self.train_data = NextItemTrainData(split, config.data.max_len, config.train.batch_size, config.seed)
        if self.train_data.num_tokens == 0:
            raise InputError(f"{dataset.name}: no training positions (every user has fewer than 2 items)")
        self.item_counts = split.train_item_counts()  # the sampler prior knows no validation or test target
        self.item_text = model_item_features(config.model, dataset)
        if self.item_text is not None and len(self.item_text.missing):
            print(f"model.item_text: {len(self.item_text.missing)} of {dataset.num_items} items have no title; "
                  "their text vector is zero")
        self.eval_sets = self._eval_sets()
        self.teacher = self._teacher()
        spec: dict[str, Any] = {"num_items": dataset.num_items, "max_len": config.data.max_len,
                                "dataset": dataset.name}
        if self.item_text is not None:
            spec["item_features"] = list(self.item_text.features.shape)
            if self.item_text.words is not None:
                spec["item_words"] = [*self.item_text.words.shape, int(self.item_text.words.max(initial=0)) + 1]
        return spec

    def vocabulary(self) -> dict[str, np.ndarray]:
        """Id maps, and for text-fused models what embedding a product added after training
        needs (``ecomjax serve``'s ``POST /items``): the title-word vocabulary and the fitted
        text normalisation."""
        out = {"item_ids": np.asarray(self.dataset.item_ids), "user_ids": np.asarray(self.dataset.user_ids)}
        if self.item_text is not None:
            out["title_vocabulary"] = np.asarray(self.item_text.vocabulary, dtype=str)
            out.update(self.item_text.normalizer.arrays())
        return out

    def data_report(self) -> dict[str, Any]:
        return self.dataset.report

    def _eval_sets(self) -> dict[str, tuple[list[dict[str, jax.Array]], int]]:
        """Validation and test batches, placed on the devices once for the whole run and split
        along ``data`` like training batches (each process holds its own rows)."""
        config, split = self.config, self.split
        mesh = self.mesh
        if config.eval.batch_size % mesh.shape["data"]:
            raise InputError(f"eval.batch_size={config.eval.batch_size} does not split over mesh.data="
                             f"{mesh.shape['data']} devices; use a multiple of {mesh.shape['data']}")
        sharding = batch_sharding(mesh)
        rows = process_rows(sharding, (config.eval.batch_size,))
        sets = {}
        for name in ("valid", "test"):
            host = eval_batches(eval_arrays(split, getattr(split, name), config.data.max_len, config.eval.batch_size,
                                            config.eval.sampled_negatives, config.seed), config.eval.batch_size)
            sets[name] = ([to_global({k: v[rows] for k, v in b.items()}, sharding, config.eval.batch_size)
                           for b in host], int(sum(b["valid"].sum() for b in host)))
        return sets

    def _teacher(self) -> nnx.Module | None:
        """The ``efficiency.distill.teacher`` run's model on this run's mesh (same items)."""
        source = self.config.efficiency.distill.teacher
        if not source:
            return None
        run = _source_run("efficiency.distill.teacher", source, self.dataset, self.mesh)
        if run.config.data.max_len < self.config.data.max_len:
            raise InputError(f"the teacher reads {run.config.data.max_len} positions, this run "
                             f"{self.config.data.max_len}: raise the teacher's data.max_len or lower this run's")
        return run.model

    # --- training --------------------------------------------------------------------------------

    def stages(self, spec: dict[str, Any]) -> list[Stage]:
        return [NextItemStage(self, spec)]

    def run(self, trainer, spec: dict[str, Any]) -> dict[str, Any]:
        trained = trainer.fit(self.stages(spec)[0])
        metrics = self.report({trained.name: trained.model})
        if self.quantized is not None and trainer.primary:
            from ecomjax.efficiency.quantize import save_quantized

            save_quantized(self.quantized, self.workdir / "quantized")
        return metrics

    def report(self, models: dict[str, nnx.Module]) -> dict[str, Any]:
        config, dataset = self.config, self.dataset
        model = models["model"]
        evaluate = _Evaluator(config)
        splits = ("valid", "test") if config.report_test else ("valid",)  # trials never score test
        metrics: dict[str, Any] = {split: evaluate(model, self.eval_sets[split]) for split in splits}
        metrics.update({
            "model": config.model.name, "loss": config.loss.name,
            "data": {"name": dataset.name, "users": dataset.num_users, "items": dataset.num_items,
                     "interactions": len(dataset.items), "train_positions": self.train_data.num_tokens,
                     "users_not_evaluated": self.split.num_train_only},
            "protocol": {
                **self.split.protocol,
                "ranking": "full catalogue", "exclude_history": config.eval.exclude_history,
                "ties": "pessimistic (items scoring equal to the target rank before it)",
                "ks": list(config.eval.ks),
                "sampled": (f"{config.eval.sampled_negatives} uniform negatives not in the history"
                            if config.eval.sampled_negatives else None),
                "selection": f"best validation {config.eval.monitor} over evaluated epochs",
            },
        })
        prune = config.efficiency.prune
        if prune.sparsity > 0:
            from ecomjax.efficiency.prune import sparsity_report

            metrics["pruning"] = {"method": prune.method, "target": prune.sparsity,
                                  **sparsity_report(nnx.state(model, nnx.Param), prune.targets)}
        if config.efficiency.quantize.weights != "none":
            metrics["quantized"] = self._quantized_metrics(model)
        return metrics

    def _quantized_metrics(self, model: nnx.Module) -> dict[str, Any]:
        """Quantize the kept model (``efficiency.quantize``), evaluate it on the same batches as
        the float model and report bytes; the run saves it under ``WORKDIR/quantized``."""
        from ecomjax.efficiency.quantize import (
            model_bytes,
            quantize_model,
            quantized_layer_bytes,
            recommender_example_inputs,
        )
        from ecomjax.train.sharding import replicated

        if jax.process_count() > 1:
            raise InputError("efficiency.quantize runs in a single process; quantize the saved run afterwards")
        config = self.config
        qconfig = config.efficiency.quantize
        quantized = quantize_model(model, qconfig, *recommender_example_inputs(config.data.max_len), method="encode")
        quantized = nnx.merge(nnx.graphdef(quantized), jax.device_put(nnx.state(quantized), replicated(self.mesh)))
        evaluate = _Evaluator(config)
        result: dict[str, Any] = {split: evaluate(quantized, self.eval_sets[split]) for split in ("valid", "test")}
        layers = quantized_layer_bytes(model, quantized)
        result["bytes"] = {"float_model": sum(model_bytes(model).values()),
                           "quantized_model": sum(model_bytes(quantized).values()),
                           "quantized_layers_float": sum(v["float"] for v in layers.values()),
                           "quantized_layers_int8": sum(v["quantized"] for v in layers.values()), "layers": layers}
        result["config"] = dataclasses.asdict(qconfig)
        self.quantized = quantized
        return result

    def summary(self, metrics: dict[str, Any]) -> str:
        keys = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")
        lines = [f"{split:5s}  " + "  ".join(f"{k} {metrics[split][k]:.4f}" for k in keys if k in metrics[split])
                 for split in ("valid", "test") if split in metrics]
        if "train_seconds" in metrics:
            lines.append(f"train {metrics['train_seconds']:.1f}s over {metrics.get('epochs_run')} epochs "
                         f"(best epoch {metrics.get('best_epoch')}, stop: {metrics.get('stop_reason')})")
        return "\n".join(lines)

    def inference(self, run) -> Any:
        from ecomjax.data.item_text import TextNormalizer
        from ecomjax.serve.recommend import NewItemContent, Recommender

        vocab, content = run.vocab, None
        if run.config.model.item_fusion != "id" and "text_normalization" in vocab:
            words = run.spec.get("item_words")
            content = NewItemContent(run.config.model.text_encoder, TextNormalizer.from_arrays(vocab),
                                     vocab["title_vocabulary"].tolist(), words[1] if words else None)
        return Recommender(run.model, vocab["item_ids"], run.spec["max_len"], content)

    def artifacts(self) -> list[str]:
        return ["vocab.npz", "quantized"]


def _source_run(key: str, source: str, dataset, mesh: jax.sharding.Mesh):
    """The finished run ``source`` (named by config ``key``) on this run's mesh; it must know
    the same items (ids and count): its item rows mean nothing otherwise."""
    from ecomjax.run import load

    try:
        run = load(source, mesh=mesh)
    except FileNotFoundError as error:
        raise MissingFileError(f"{key}={source!r}: {error}") from None
    _check_same_items(key, source, run, dataset)
    return run


def _check_same_items(key: str, source: str, run, dataset) -> None:
    if run.config.task != "next_item":
        raise InputError(f"{key}={source!r} is a {run.config.task} run, not a next-item recommender")
    ids = run.vocab["item_ids"]
    if len(ids) != len(dataset.item_ids) or not np.array_equal(ids, dataset.item_ids):
        raise InputError(f"{key}={source!r} was trained on {run.spec['dataset']} ({run.spec['num_items']} items), "
                         f"this run on {dataset.name} ({dataset.num_items} items): it must know the same items")


class _Evaluator:
    """Leave-one-out metrics of a model over device-resident batches (one compile per width)."""

    def __init__(self, config: NextItemConfig):
        self.config = config
        self.cache: dict[Any, Any] = {}

    def function(self, model: nnx.Module):
        from ecomjax.eval.sequential import make_evaluator

        graphdef, state = nnx.split(model)
        if graphdef not in self.cache:
            e = self.config.eval
            self.cache[graphdef] = make_evaluator(graphdef, tuple(e.ks), e.exclude_history, e.sampled_negatives > 0)
        return self.cache[graphdef], state

    def __call__(self, model: nnx.Module, eval_set) -> dict[str, Any]:
        from ecomjax.eval.sequential import evaluate_split

        evaluate, state = self.function(model)
        batches, users = eval_set
        return evaluate_split(evaluate, (state,), batches, users)


class NextItemStage(Stage):
    """The recommender of a next-item run; buildable from the spec alone (``ecomjax.load``)."""

    name = "model"

    def __init__(self, task: NextItemTask, spec: dict[str, Any]):
        config = task.config
        self.task, self.config, self.spec = task, config, spec
        self.train = config.train
        self.monitor = config.eval.monitor
        self.num_items = spec["num_items"]
        self.max_len = spec["max_len"]
        lora = config.efficiency.lora
        self.lora = None
        if lora.rank:
            from ecomjax.efficiency.lora import LoraConfig

            self.lora = LoraConfig(lora.rank, lora.alpha, lora.targets, also_train=lora.also_train)
        self.evaluator = _Evaluator(config)
        if task.dataset is not None:  # training: the real item features and counts
            text = task.item_text
            self.features = None if text is None else text.features
            self.words = None if text is None else text.words
            self.counts = task.item_counts
            self.log_prior = jnp.asarray(item_log_prior(task.item_counts, config.loss.sampler))
        else:  # loading: placeholders of the recorded shapes; the checkpoint's buffers hold the values
            self.features, self.words, self.counts = _placeholders(spec)
            self.log_prior = None

    def build(self) -> nnx.Module:
        config = self.config
        model = build_sequential_model(config.model, self.num_items, self.max_len, rngs=nnx.Rngs(config.seed),
                                       item_features=self.features, item_words=self.words,
                                       item_counts=self.counts)
        quantize = config.efficiency.quantize
        if quantize.qat or self.lora is not None:
            from ecomjax.efficiency.quantize import recommender_example_inputs

            inputs = recommender_example_inputs(self.max_len)
            if quantize.qat:
                from ecomjax.efficiency.quantize import quantization_aware

                model = quantization_aware(model, quantize, *inputs, method="encode")
            if self.lora is not None:
                from ecomjax.efficiency.lora import apply_lora

                model = apply_lora(model, self.lora, *inputs, seed=config.seed, method="encode")
        return model

    def trainable(self) -> nnx.filterlib.Filter:
        if self.lora is None:
            return nnx.Param
        from ecomjax.efficiency.lora import lora_trainable

        return lora_trainable(also_train=self.lora.also_train)

    def batches(self, epoch: int):
        return self.task.train_data.batches(epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        return self.task.train_data.steps_in_epoch(epoch)

    def loss(self, model, batch: Mapping[str, jax.Array], rng: jax.Array, *, chunked: bool = True):
        config = self.config
        dropout_key, loss_key = jax.random.split(rng)
        hidden = model.encode(batch["items"], batch["positions"], batch["segments"], deterministic=False,
                              rngs=nnx.Rngs(dropout=dropout_key))
        table = model.item_table(deterministic=False, rngs=nnx.Rngs(dropout=jax.random.fold_in(dropout_key, 1)))
        quantize = config.efficiency.quantize
        if quantize.qat and quantize.tables:  # the catalogue scores int8 rows (and int8 hidden rows)
            from ecomjax.efficiency.quantize import fake_quantize_rows

            table = fake_quantize_rows(table)
            if quantize.activations == "int8":
                hidden = fake_quantize_rows(hidden)
        loss, tokens = next_item_loss(hidden, batch["targets"], table, config.loss, loss_key, self.log_prior,
                                      self.num_items, chunked=chunked)
        teacher = self.task.teacher
        if teacher is not None:
            distill = config.efficiency.distill
            loss = (1.0 - distill.weight) * loss + distill.weight * _distillation_term(
                hidden, table, batch, teacher, distill.temperature, self.num_items)
        return loss, {"tokens": tokens}

    def flops_loss(self, model, batch, rng):
        return self.loss(model, batch, rng, chunked=False)  # no loop: XLA counts every matmul

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, Any]:
        return self.evaluator(model, self.task.eval_sets[split])

    def warm_up(self, model: nnx.Module) -> None:
        from ecomjax.eval.sequential import warm_up_evaluator

        evaluate, state = self.evaluator.function(model)
        sets = self.task.eval_sets
        warm_up_evaluator(evaluate, (state,), sets["valid"][0] + sets["test"][0])

    def update_transforms(self, total_steps: int) -> list:
        prune = self.config.efficiency.prune
        if prune.sparsity <= 0:
            return []
        from ecomjax.efficiency.prune import pruning

        row_counts = None
        if self.counts is not None:  # tables carry padding rows past the catalogue: count 0
            row_counts = np.zeros(padded_vocab(self.num_items + 1), np.int64)
            row_counts[:len(self.counts)] = self.counts
        return [pruning(prune, total_steps, self.config.model.num_heads, row_counts)]

    def selectable_from(self, total_steps: int) -> int:
        from ecomjax.efficiency.prune import pruning_end_step

        return pruning_end_step(self.config.efficiency.prune, total_steps)

    def check_init_from(self, run) -> None:
        _check_same_items("train.init_from", self.config.train.init_from, run, self.task.dataset)


def _placeholders(spec: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Item features, title words and counts of the recorded shapes (values come from the
    checkpoint): the word table's size follows the largest word id, so one carries it."""
    rows = spec["num_items"] + 1
    features = np.zeros(spec["item_features"], np.float32) if "item_features" in spec else None
    words = None
    if "item_words" in spec:
        _, width, vocab = spec["item_words"]
        words = np.zeros((rows, width), np.int32)
        words[min(1, rows - 1), 0] = vocab - 1
    return features, words, np.zeros(rows, np.int64)


def _distillation_term(hidden, table, batch, teacher: nnx.Module, temperature: float, num_items: int):
    """KL(teacher || student) at temperature ``temperature`` over the catalogue, per target."""
    from ecomjax.efficiency.distill import distillation_kl

    teacher_hidden = teacher.encode(batch["items"], batch["positions"], batch["segments"], deterministic=True)
    rows = num_items + 1  # both tables hold ids 0..num_items; padding rows past it may differ

    def logits(h, t):
        h = h.reshape(-1, h.shape[-1])
        return jnp.einsum("td,nd->tn", h, t[:rows].astype(h.dtype), preferred_element_type=jnp.float32)

    weight = (batch["targets"].reshape(-1) > 0).astype(jnp.float32)
    return distillation_kl(logits(hidden, table), logits(teacher_hidden, teacher.item_table()), weight,
                           temperature, num_items)


def load_quantized(run) -> nnx.Module:
    """The int8 recommender a run saved (``efficiency.quantize`` in its config): the arrays of
    ``WORKDIR/quantized`` in the architecture the run's spec rebuilds; no float checkpoint read."""
    from ecomjax.efficiency.quantize import abstract_quantized, recommender_example_inputs
    from ecomjax.efficiency.quantize import load_quantized as fill

    config = run.config
    if config.efficiency.quantize.weights == "none":
        raise InputError(f"{run.workdir} was not quantized: train it with efficiency.quantize.weights=int8")
    stage = run.task.stages(run.spec)[0]
    abstract = abstract_quantized(stage.build, config.efficiency.quantize,
                                  *recommender_example_inputs(run.spec["max_len"]), method="encode")
    return fill(abstract, Path(run.workdir) / "quantized")


__all__: Sequence[str] = ["NextItemConfig", "NextItemStage", "NextItemTask", "load_quantized"]
