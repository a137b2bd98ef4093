"""The one config machinery: YAML files plus dotted ``key=value`` overrides, typed and validated.

A misspelt key or a bad value must fail before any data is read or anything is compiled, with a
message that names the key and says what would have been accepted; a long run that silently
ignores ``model.hiden_size=128`` wastes an afternoon. Every section is a dataclass whose field
types are the schema: ``Literal`` fields list their allowed values, numeric fields are checked
for type and for the ranges a section declares in ``RANGES`` (a subclass's ``RANGES`` extend its
bases'). Whatever a field's range, a float must be finite and an integer must fit in int64. A
config file must be a UTF-8 YAML mapping that is not empty and repeats no key.

The sections every task shares are defined here once: ``train`` (optimizer, schedule, stopping,
checkpoints), ``mesh``, ``eval``, and the efficiency sections (``quantize``, ``prune``,
``distill``, ``lora``). Each task owns its config class (a ``RunConfig`` with its own data and
model sections) in its module; the ``task:`` key of a file picks it through the ``TASKS``
registry (``ecomjax.tasks``), and no ``task:`` means the next-item recommender.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ecomjax.errors import ConfigError

Check = tuple[Callable[[Any], bool], str]  # (predicate, description of the allowed values)
AT_LEAST_1: Check = (lambda v: v >= 1, "an integer >= 1")
AT_LEAST_0: Check = (lambda v: v >= 0, "an integer >= 0")
POSITIVE: Check = (lambda v: v > 0, "a number > 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, "a number >= 0")
FRACTION: Check = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
DROPOUT: Check = (lambda v: 0 <= v < 1, "a number in [0, 1)")


def _is_regex(value: str) -> bool:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError, ValueError):  # "a{99999999999}" overflows
        return False
    return True


REGEX: Check = (_is_regex, "a regular expression")
# jax.random.key keeps the low 32 bits of a seed (2**32 would be seed 0 again); numpy's generators
# refuse negative seeds
SEED: Check = (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
INT64_MAX = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # not '1_0', ' 1', '١'


# ---------------------------------------------------------------------------------------------
# Shared sections
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping and checkpointing of one trained model (the loop's input)."""

    batch_size: int = 32  # examples (or packed rows) per step, over all devices and processes
    epochs: int = 50  # upper bound; early stopping usually ends sooner
    optimizer: Literal["adamw", "adagrad"] = "adamw"
    learning_rate: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # adamw: decoupled decay; adagrad: L2 added to the gradients
    # Adam's epsilon. An item that is never a target gets only tiny, one-signed softmax gradients
    # (rms ~1e-7 on Beauty); at the default 1e-8 Adam turns them into full-size steps that push its
    # row away from every user, and a larger epsilon damps exactly those coordinates. On Beauty
    # (text-fused, 128-d) 1e-6 did not help: test NDCG@10 0.0618 vs 0.0632.
    adam_eps: float = 1e-8
    warmup_steps: int = 100  # linear warm-up from 0 to learning_rate
    warmup_fraction: float = 0.0  # > 0: warm up over this fraction of all planned steps instead
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # after warm-up, over all planned steps
    end_learning_rate_ratio: float = 0.05  # final lr = ratio * learning_rate (cosine/linear)
    grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables
    # {parameter-path substring: multiplier} on the updates of matching parameters, e.g. LoRA+
    # ({"_lora_b": 16}: the zero-initialised B matrices learn 16x faster than A, Hayou et al. 2024)
    learning_rate_scales: dict[str, float] = field(default_factory=dict)
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit); the schedule is unaffected
    eval_every_epochs: int = 1  # validation frequency for early stopping
    early_stopping_patience: int = 5  # evaluations without a better validation monitor before stopping
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0 = only after each evaluation)
    resume: bool = True  # continue from workdir/checkpoints when they exist
    # workdir of a finished run of the same task and model: its best parameters start this one
    # (same shapes; fresh optimizer and schedule): fine-tune, prune or adapt a trained model
    init_from: str | None = None
    prng_impl: Literal["threefry2x32", "rbg", "unsafe_rbg"] = "threefry2x32"  # dropout RNG
    progress: bool = True  # progress bar on the terminal
    # where the loop's records also go (ecomjax.train.tracking): tensorboard = event files under
    # WORKDIR/tensorboard/<stage>, wandb = a Weights & Biases run per stage (WANDB_MODE honoured);
    # jsonl (history.jsonl, the run's record) is always written, listed or not
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])

    RANGES: ClassVar[dict[str, Check]] = {
        "batch_size": AT_LEAST_1, "epochs": AT_LEAST_1, "learning_rate": POSITIVE,
        "weight_decay": NON_NEGATIVE, "adam_eps": POSITIVE, "warmup_steps": AT_LEAST_0,
        "warmup_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "end_learning_rate_ratio": FRACTION, "grad_clip_norm": NON_NEGATIVE,
        "learning_rate_scales": (lambda v: all(x > 0 for x in v.values()), "multipliers > 0"),
        "max_steps": AT_LEAST_0, "eval_every_epochs": AT_LEAST_1, "early_stopping_patience": AT_LEAST_1,
        "checkpoint_every_steps": AT_LEAST_0,
        "loggers": (lambda v: len(set(v)) == len(v), "a list naming each logger once"),
    }


@dataclass
class EvalConfig:
    """Evaluation of a ranking task (next item, multi-behaviour): cut-offs, batch, selection."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512  # users scored per batch
    monitor: str = "ndcg@10"  # validation metric for early stopping and the kept checkpoint

    RANGES: ClassVar[dict[str, Check]] = {
        "ks": (lambda v: len(v) > 0 and all(k >= 1 for k in v), "a non-empty list of integers >= 1"),
        "batch_size": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        name, _, k = self.monitor.partition("@")
        if self.monitor != "mrr" and (name not in ("hr", "ndcg", "mrr") or not (k.isascii() and k.isdigit())
                                      or int(k) not in self.ks):
            raise ConfigError(f"eval.monitor: {self.monitor!r} is not computed; allowed: hr@k, ndcg@k, mrr@k "
                              f"with k in eval.ks {self.ks}, or mrr")


def _default_rules() -> dict[str, str | None]:
    """Every logical axis name a model tags a parameter dimension with, and its default mesh axis."""
    return {
        "batch": "data",  # examples / packed rows
        "vocab": "model",  # id-table rows (items, users, feature values): vocab-parallel embeddings
        "embed": None,  # model width
        "mlp": "model",  # feed-forward inner width
        "heads": "model",  # attention projections (query/key/value outputs, output input)
        "gates": None,  # recurrent gate width (sharding it costs a collective per time step)
        "positions": None,  # position-table rows
        "norm": None,  # layer-norm scales and biases
    }


@dataclass
class MeshConfig:
    """Device mesh ``(data, model)`` and where each logical parameter axis lives on it."""

    data: int = -1  # data-parallel size; -1 = the devices left after mesh.model
    model: int = 1  # model-parallel size (vocab-parallel tables, tensor-parallel blocks); -1 = the rest
    # logical axis -> mesh axis (data, model) or null (kept whole), MaxText-style
    rules: dict[str, Literal["data", "model"] | None] = field(default_factory=_default_rules)

    RANGES: ClassVar[dict[str, Check]] = {
        "data": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 for the devices left over"),
        "model": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 for the devices left over"),
    }

    def __post_init__(self) -> None:
        known = list(_default_rules())
        unknown = [name for name in self.rules if name not in known]
        if unknown:  # a misspelt axis would leave the real one on its default placement
            raise ConfigError(f"mesh.rules: unknown logical axis {unknown[0]!r}; known axes: {known}")


@dataclass
class QuantizeConfig:
    """Int8 quantization (``ecomjax.efficiency.quantize``): after training the run evaluates the
    quantized model beside the float one and saves it for serving; with ``qat`` the model also
    trains through the int8 rounding it will be served with."""

    weights: Literal["none", "int8"] = "none"  # int8: dense kernels (scale per output channel) + tables (scale per row)
    activations: Literal["none", "int8"] = "int8"  # int8: matmul inputs quantized per row at run time (int8 kernels); none: weight-only
    tables: bool = True  # int8 embedding tables (the item table: lookups and catalogue scores)
    min_table_rows: int = 256  # smaller tables (positions) stay float32: a rounding error of the bytes
    module_path: str = ".*"  # regex of the module paths whose dense layers qwix quantizes
    qat: bool = False  # quantization-aware training: int8 fake quantization (straight-through) while training

    RANGES: ClassVar[dict[str, Check]] = {"min_table_rows": AT_LEAST_1, "module_path": REGEX}


@dataclass
class PruneConfig:
    """Pruning during training (``ecomjax.efficiency.prune``): an optax transformation after the
    optimizer keeps pruned weights at zero; sparsity follows Zhu & Gupta's cubic schedule."""

    sparsity: float = 0.0  # final fraction pruned in every targeted tensor; 0 = off
    # structured: neurons = whole feed-forward units, heads = whole attention heads, or both
    method: Literal["magnitude", "neurons", "heads", "neurons+heads"] = "magnitude"
    begin_fraction: float = 0.1  # of the planned steps: first pruning step
    end_fraction: float = 0.6  # of the planned steps: target sparsity reached (checkpoints are selected after)
    frequency: int = 50  # steps between mask updates
    targets: str = r"(kernel|embedding)$"  # magnitude: regex of the parameter paths pruned
    # magnitude: sparsity per tensor, per row, one threshold over all, or (item tables) a per-row
    # share growing with the item's training interactions, (count + 1) ** popularity_power
    scope: Literal["tensor", "row", "global", "popularity"] = "tensor"
    popularity_power: float = 0.25  # scope=popularity: 0 = every row the same share (= row)

    RANGES: ClassVar[dict[str, Check]] = {
        "sparsity": DROPOUT, "begin_fraction": FRACTION, "end_fraction": FRACTION, "frequency": AT_LEAST_1,
        "popularity_power": NON_NEGATIVE, "targets": REGEX,
    }


@dataclass
class DistillConfig:
    """Teacher -> student training (``ecomjax.efficiency.distill``): the run's model learns from
    the next-item labels and from a finished run's catalogue distribution."""

    teacher: str | None = None  # workdir of a finished recommender run on the same data; null = off
    weight: float = 0.5  # loss = (1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student)
    temperature: float = 2.0  # softens both distributions: the teacher's near-misses carry weight

    RANGES: ClassVar[dict[str, Check]] = {"weight": FRACTION, "temperature": POSITIVE}


@dataclass
class LoraSection:
    """LoRA adapters (``ecomjax.efficiency.lora``): only low-rank updates of the dense layers
    matching ``targets`` train (plus ``also_train``'s parameters); the base stays frozen. Which
    base is adapted is the task's: a finished run (``train.init_from``) for the recommender and
    the ranker, the pretrained encoder for the search cross-encoder."""

    rank: int = 0  # adapter rank r; 0 = off
    alpha: float = 16.0  # the update is scaled by alpha / r
    targets: str = ".*"  # regex, full match of the module paths of the adapted layers (tasks set theirs)
    # regex, full match of parameter paths (``blocks/0/attention_norm/scale``): base parameters trained
    # beside the adapters (a low-rank update cannot move a bias or a LayerNorm); empty = adapters only
    also_train: str = ""
    quantize_base: bool = False  # QLoRA: the frozen base weights in int8 while the adapters train
    # LoRA+ (Hayou et al. 2024): B's learning rate = ratio x A's (16 in the paper)
    b_learning_rate_ratio: float = 1.0

    RANGES: ClassVar[dict[str, Check]] = {
        "rank": (lambda v: v >= 0, "an integer >= 0 (0 = off)"), "alpha": POSITIVE,
        "targets": (lambda v: _is_regex(v) and v != "", "a non-empty regular expression"),
        "also_train": (_is_regex, "a regular expression ('' = adapters only)"),
        "b_learning_rate_ratio": POSITIVE,
    }


@dataclass
class RunConfig:
    """What every run has: its task, where it writes, its seed and its device mesh. A task's
    config class extends it with the task's own sections."""

    task: str = "next_item"  # the TASKS registry key (ecomjax.tasks)
    workdir: str = "runs/run"
    seed: int = 0  # training randomness: initialisation, shuffling, dropout, splits
    # false: metrics.json holds validation only, no test number. Hyperparameter trials run so
    # (ecomjax.tuning): a choice made among them cannot have seen the test split.
    report_test: bool = True
    mesh: MeshConfig = field(default_factory=MeshConfig)

    RANGES: ClassVar[dict[str, Check]] = {"seed": SEED}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Machinery
# ---------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(allowed)}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        nullable = " (or null)" if type(None) in options else ""
        raise ConfigError((errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}") + nullable)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_short(value)}")
        return {_coerce(f"{key} key", k, key_tp): _coerce(f"{key}.{k}", v, value_tp) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {_short(value)}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        if abs(value) > INT64_MAX:
            raise ConfigError(f"{key}: {_short(value)} is out of range; integers must fit in int64 (|value| < 2**63)")
        return value
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            if _DECIMAL.fullmatch(value):
                number = float(value)
            elif value.strip().lstrip("+-").lower() in ("inf", "infinity", "nan"):
                number = math.nan
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        try:
            number = float(number)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {_short(value)} is not a finite number; NaN and infinities are not allowed")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_short(value)}")
        return value
    raise ConfigError(f"{key}: unsupported schema type {tp}")  # pragma: no cover - schema bug


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, validating every key and value;
    ``prefix`` (``"train."``) is how error messages name the section."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    for key in values:
        if key not in names:
            section = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed keys in {section}: {names}")
    ranges: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):  # a subclass's RANGES extend (and may override) its bases'
        ranges.update(vars(klass).get("RANGES", {}))
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        key, tp, value = f"{prefix}{name}", hints[name], values[name]
        if dataclasses.is_dataclass(tp):
            # a section's defaults come from the enclosing class (a task's own train defaults)
            default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
            merged = {**(dataclasses.asdict(default) if default is not None else {}), **(value or {})} \
                if isinstance(value, dict) or value is None else value
            kwargs[name] = build_section(tp, merged, key + ".")
            continue
        value = _coerce(key, value, tp)
        if typing.get_origin(tp) is dict and fields[name].default_factory is not dataclasses.MISSING:
            value = {**fields[name].default_factory(), **value}  # a mapping extends its defaults
        if name in ranges and value is not None:
            check, allowed = ranges[name]
            if not check(value):
                raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a section's own cross-field check: name its place
        message = str(exc)
        raise ConfigError(message if not prefix or message.startswith(prefix) else f"{prefix.rstrip('.')}: {message}") from None


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"key {key!r} has an empty part (a leading, trailing or doubled '.')")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice; ``key`` is its dotted path, ``line`` and ``first`` are
    1-based lines of the repeat and of the first occurrence."""

    def __init__(self, key: str, line: int, first: int):
        super().__init__(f"duplicate key {key!r} (first on line {first})")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a mapping that names one key twice: PyYAML keeps the last one
    silently, so the first ``epochs:`` of a section would be ignored without a word."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._paths: dict[int, str] = {}  # id(value node) -> its dotted key, for messages

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        parent = self._paths.get(id(node), "")
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:  # before merge keys (<<) are flattened in
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            dotted = f"{parent}.{key}" if parent else str(key)
            if first is not None:
                raise DuplicateKeyError(dotted, key_node.start_mark.line + 1, first)
            seen[key] = key_node.start_mark.line + 1
            self._paths[id(value_node)] = dotted
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that raises ``DuplicateKeyError`` for a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: plain types only


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.num_layers=2'`` -> ``('model.num_layers', 2)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"override {key}: cannot parse value {_short(raw)}: {_yaml_problem(exc)}") from None
    return key, value


def _yaml_problem(exc: BaseException) -> str:
    """A YAML error on one line: what is wrong, and where (PyYAML's own text spans several)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, DuplicateKeyError):
        return f"line {exc.line}: {exc}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds: UTF-8 text, a mapping at the top level, not empty,
    no key given twice; anything else is a ``ConfigError`` naming the file (and line)."""
    from ecomjax.data.files import read_text  # ecomjax.data imports this module

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = read_text(path, error=ConfigError)
    try:
        tree = yaml_load(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}:{exc.line}: duplicate key {exc.key!r} (first on line {exc.first}); "
                          "a repeated key would silently replace the first") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if tree is None:
        raise ConfigError(f"{path}: the config file is empty (or only comments); give at least one "
                          "section, or no file for all defaults")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (key: value), "
                          f"got {type(tree).__name__}")
    return tree


def config_tree(source: str | Path | dict[str, Any] | Any | None,
                overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain nested mapping a config source describes, with dotted overrides applied.

    ``source``: a YAML path, a mapping, a config dataclass (anything with ``to_dict``) or
    ``None``; ``overrides``: CLI-style ``["train.epochs=3"]`` or a mapping ``{"train.epochs": 3}``
    (keyword arguments arrive as the latter, with ``__`` standing for ``.``).
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif hasattr(source, "to_dict"):
        tree = source.to_dict()
    elif isinstance(source, dict):
        try:
            tree = yaml.safe_load(yaml.safe_dump(source))  # deep copy, plain types only
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"config mapping: holds a value that is not plain data "
                              f"(str, number, bool, list, mapping): {_yaml_problem(exc)}") from None
    elif isinstance(source, str | os.PathLike):
        tree = read_config_file(source)
    else:
        raise ConfigError(f"config source must be a YAML path, a mapping or a config, got {type(source).__name__}")
    if isinstance(overrides, dict):
        bad = [k for k in overrides if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"override key {bad[0]!r} is not a string (dotted, e.g. 'train.epochs')")
        pairs = [(k.replace("__", "."), v) for k, v in overrides.items()]
    else:
        bad = [o for o in overrides or [] if not isinstance(o, str)]
        if bad or isinstance(overrides, str):
            raise ConfigError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
        pairs = [parse_override(o) for o in overrides or []]
    for key, value in pairs:
        _set_dotted(tree, key, value)
    return tree


def load_config(source: str | Path | dict[str, Any] | RunConfig | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Resolve a config from a YAML path, a mapping or a config, apply dotted overrides and
    validate it against the schema of its ``task:`` (default ``next_item``).

    ``overrides`` is either CLI-style ``["train.epochs=3"]`` or a mapping
    ``{"train.epochs": 3}`` (keyword arguments of ``ecomjax.train`` arrive as the latter, with
    ``__`` standing for ``.`` so that ``train__epochs=3`` works as a Python keyword).
    """
    from ecomjax.tasks import task_class

    tree = config_tree(source, overrides)
    name = tree.get("task", RunConfig.task)
    return build_section(task_class(name).Config, tree)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write a config as the YAML ``load_config`` reads back."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
