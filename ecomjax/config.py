"""Typed run configuration: YAML files plus dotted ``key=value`` overrides, validated at once.

A misspelt key or a bad value must fail before any data is read or anything is compiled, with a
message that names the key and says what would have been accepted; a long run that silently
ignores ``model.hiden_size=128`` wastes an afternoon. Every section is a dataclass whose field
types are the schema: ``Literal`` fields list their allowed values, numeric fields are checked
for type and range.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


@dataclass
class SyntheticConfig:
    """The built-in synthetic shop (see ``ecomjax.data.synthetic``)."""

    num_users: int = 2000  # shoppers, each with a latent taste vector
    num_items: int = 1000  # catalogue size
    num_categories: int = 20  # items belong to one category each; tastes are over categories
    mean_length: float = 12.0  # mean purchases per user (geometric tail, at least min_length)
    min_length: int = 5  # like the 5-core filtering of the Amazon files
    popularity_skew: float = 1.0  # Zipf exponent of item popularity inside a category
    taste_concentration: float = 0.3  # Dirichlet concentration: small = users love few categories
    sequential_strength: float = 0.6  # probability the next purchase follows the previous item's category
    seed: int = 0  # the generator's own seed, separate from training randomness


@dataclass
class DataConfig:
    """Where interaction sequences come from and how they become model inputs."""

    source: Literal["synthetic", "sequences"] = "synthetic"  # sequences = `user item item ...` file
    path: str | None = None  # file for source=sequences; relative paths also tried under $ECOMJAX_DATA_DIR
    max_len: int = 50  # most recent items a model sees; longer histories are truncated on the left
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    """Sequential recommender architecture (``ecomjax.models``)."""

    name: Literal["sasrec", "gru4rec"] = "sasrec"
    hidden_size: int = 64  # item embedding width = model width (embeddings are tied to the output)
    num_layers: int = 2  # transformer blocks or stacked RNN layers
    num_heads: int = 2  # attention heads (sasrec)
    ffn_size: int = 256  # feed-forward inner width (sasrec)
    dropout: float = 0.5  # embedding / residual / recurrent-output dropout
    attention_dropout: float = 0.5  # dropout on attention weights (sasrec)
    norm_first: bool = True  # pre-LN blocks (stable at larger learning rates); false = post-LN as in BERT
    activation: Literal["gelu", "relu"] = "gelu"
    rnn_cell: Literal["gru", "lstm"] = "gru"  # gru4rec only
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmul dtype; parameters stay float32
    # Item representation (``ecomjax.models.item_embedding``): id | add | gated | text_only. The
    # last three read one title per item from ``item_text`` (tab-separated, header, first column
    # the item id as in the data file, last column the title), embedded once with ``text_encoder``.
    item_fusion: Literal["id", "add", "gated", "text_only"] = "id"
    item_text: str | None = None  # titles file; relative paths also tried under $ECOMJAX_DATA_DIR
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # directory, weights package or hub id
    item_id_init: Literal["normal", "zeros"] = "normal"  # zeros: IDs start as residuals on the title vector
    item_id_dropout: float = 0.0  # training: drop whole ID vectors with this probability (add / gated)
    text_adapter_size: int = 0  # 0: title vector -> linear map; N: GELU MLP with N hidden units
    text_normalization: Literal["center", "whiten", "none"] = "center"  # catalogue mean off (+ PCA whitening), unit norm
    # > 0: also learn an embedding per title word used by at least this many items; an item's
    # content vector adds the mean of its words' (brands, product lines carry co-purchase signal)
    title_word_min_items: int = 0
    # JSON {item id: [attribute ids]} (brand, categories; Beauty_item2attributes.json): each
    # attribute carried by >= 2 items becomes a learned token averaged in with the title words
    item_attributes: str | None = None
    # Warm IDs, content for the rest: items with fewer training interactions than this get no ID
    # vector (title vector only), so a rarely bought item is not scored by an ID row that training
    # mostly pushed away from every user; 0 = every item has one
    item_id_min_interactions: int = 0
    # > 0: add a learned vector per popularity bucket, floor(log2(1 + training interactions)),
    # capped at this many buckets: the popularity prior of items without (or with weak) IDs
    item_count_buckets: int = 0

    def __post_init__(self) -> None:
        if self.item_fusion != "id" and not self.item_text:
            raise ConfigError(f"model.item_fusion={self.item_fusion!r} needs model.item_text "
                              "(a file with one title per item)")
        if self.item_id_init == "zeros" and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_init='zeros' makes IDs residuals on title vectors: "
                              "it needs model.item_fusion add or gated")
        if self.item_id_dropout and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_dropout needs model.item_fusion add or gated: an item "
                              "whose ID is dropped must keep its title vector")
        if not 0 <= self.item_id_dropout < 1:
            raise ConfigError(f"model.item_id_dropout: {self.item_id_dropout} is out of range; allowed: [0, 1)")
        if self.title_word_min_items < 0:
            raise ConfigError(f"model.title_word_min_items: {self.title_word_min_items} must be >= 0 (0: off)")
        if self.title_word_min_items and self.item_fusion == "id":
            raise ConfigError("model.title_word_min_items needs titles: set model.item_fusion to add, "
                              "gated or text_only and model.item_text")
        if self.item_attributes and self.item_fusion == "id":
            raise ConfigError("model.item_attributes needs titles: set model.item_fusion to add, "
                              "gated or text_only and model.item_text")
        for name in ("item_id_min_interactions", "item_count_buckets"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}: {getattr(self, name)} must be >= 0 (0: off)")
        if self.item_id_min_interactions and self.item_fusion not in ("add", "gated"):
            raise ConfigError("model.item_id_min_interactions leaves rare items their title vector only: "
                              "it needs model.item_fusion add or gated")
        if self.item_count_buckets and self.item_fusion == "id":
            raise ConfigError("model.item_count_buckets adds to the content vector: set model.item_fusion "
                              "to add, gated or text_only and model.item_text")
        if self.item_fusion == "id" and self.item_text:
            raise ConfigError("model.item_text is set but model.item_fusion is 'id', so the titles "
                              "would be ignored; choose add, gated or text_only")


@dataclass
class LossConfig:
    """Next-item objective over the catalogue (``ecomjax.tasks.next_item``)."""

    name: Literal["full_softmax", "sampled_softmax", "bce"] = "full_softmax"
    num_negatives: int = 256  # sampled_softmax: negatives shared by the batch
    sampler: Literal["uniform", "popularity"] = "uniform"  # sampled_softmax negative distribution
    logq_correction: bool = True  # sampled_softmax: subtract log Q(item) from every logit


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping and checkpointing."""

    batch_size: int = 32  # rows per step; each row packs several users' sequences (max_len tokens)
    epochs: int = 50  # upper bound; early stopping usually ends sooner
    learning_rate: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # decoupled AdamW decay; embeddings and norms included
    # Adam's epsilon. An item that is never a target gets only tiny, one-signed softmax gradients
    # (rms ~1e-7 on Beauty); at the default 1e-8 Adam turns them into full-size steps that push its
    # row away from every user, and a larger epsilon damps exactly those coordinates. On Beauty
    # (text-fused, 128-d) 1e-6 did not help: test NDCG@10 0.0618 vs 0.0632.
    adam_eps: float = 1e-8
    warmup_steps: int = 100  # linear warm-up from 0 to learning_rate
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # after warm-up, over all planned steps
    end_learning_rate_ratio: float = 0.05  # final lr = ratio * learning_rate (cosine/linear)
    grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit); the schedule is unaffected
    eval_every_epochs: int = 1  # validation frequency for early stopping
    early_stopping_patience: int = 5  # evaluations without a better validation ndcg@10 before stopping
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0 = only after each evaluation)
    resume: bool = True  # continue from workdir/checkpoints when they exist
    init_from: str | None = None  # workdir of a finished run on the same items: its best parameters start
    # this one (same model shapes; fresh optimizer and schedule): fine-tune, prune or adapt a trained model
    prng_impl: Literal["threefry2x32", "rbg", "unsafe_rbg"] = "threefry2x32"  # dropout RNG
    progress: bool = True  # progress bar on the terminal


@dataclass
class EvalConfig:
    """Leave-one-out ranking evaluation (``ecomjax.eval``)."""

    exclude_history: bool = True  # earlier items of the user get -inf before ranking (S3-Rec protocol)
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512  # users scored per batch
    sampled_negatives: int = 0  # >0 adds the sampled protocol (e.g. 100 uniform negatives) beside full ranking
    monitor: str = "ndcg@10"  # validation metric for early stopping and best checkpoint


def _default_rules() -> dict[str, str | None]:
    return {
        "batch": "data",  # examples / packed rows
        "vocab": "model",  # item-table rows: vocab-parallel embeddings and logits
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


@dataclass
class DistillConfig:
    """Teacher -> student training (``ecomjax.efficiency.distill``): the run's model learns from
    the next-item labels and from a finished run's catalogue distribution."""

    teacher: str | None = None  # workdir of a finished recommender run on the same data; null = off
    weight: float = 0.5  # loss = (1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student)
    temperature: float = 2.0  # softens both distributions: the teacher's near-misses carry weight


@dataclass
class AdaptersConfig:
    """LoRA adapters on a trained recommender (``ecomjax.efficiency.lora``): the model of
    ``train.init_from`` stays frozen and only low-rank updates of its dense layers train (a new
    market, a new season, a user segment: one small set of adapters each, one shared base)."""

    rank: int = 0  # adapter rank r; 0 = off
    alpha: float = 16.0  # the update is scaled by alpha / r
    targets: str = r".*blocks/\d+/(attention/(qkv|out)|feed_forward/(up|down))"  # regex, full match of module paths
    # regex, full match of parameter paths (``blocks/0/attention_norm/scale``): base parameters trained
    # beside the adapters (a low-rank update cannot move a bias or a LayerNorm); empty = adapters only
    also_train: str = ""


@dataclass
class EfficiencyConfig:
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: AdaptersConfig = field(default_factory=AdaptersConfig)


@dataclass
class Config:
    """A whole run: what to train on, what to train, how, and where to write."""

    workdir: str = "runs/quickstart"
    seed: int = 0  # training randomness: initialisation, shuffling, dropout
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Range checks beyond types: key -> (predicate, description of the allowed values).
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.max_len": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic.num_users": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic.num_items": (lambda v: v >= 2, "an integer >= 2"),
    "data.synthetic.num_categories": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic.min_length": (lambda v: v >= 3, "an integer >= 3 (leave-one-out needs 3)"),
    "data.synthetic.mean_length": (lambda v: v >= 3, "a number >= 3"),
    "data.synthetic.taste_concentration": (lambda v: v > 0, "a number > 0"),
    "data.synthetic.sequential_strength": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "model.hidden_size": (lambda v: v >= 1, "an integer >= 1"),
    "model.num_layers": (lambda v: v >= 1, "an integer >= 1"),
    "model.num_heads": (lambda v: v >= 1, "an integer >= 1"),
    "model.ffn_size": (lambda v: v >= 1, "an integer >= 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.attention_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "loss.num_negatives": (lambda v: v >= 1, "an integer >= 1"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.learning_rate": (lambda v: v > 0, "a number > 0"),
    "train.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "train.adam_eps": (lambda v: v > 0, "a number > 0"),
    "train.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.end_learning_rate_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "train.grad_clip_norm": (lambda v: v >= 0, "a number >= 0"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.eval_every_epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.early_stopping_patience": (lambda v: v >= 1, "an integer >= 1"),
    "train.checkpoint_every_steps": (lambda v: v >= 0, "an integer >= 0"),
    "mesh.data": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 for the devices left over"),
    "mesh.model": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 for the devices left over"),
    "eval.ks": (lambda v: len(v) > 0 and all(k >= 1 for k in v), "a non-empty list of integers >= 1"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.sampled_negatives": (lambda v: v >= 0, "an integer >= 0"),
    "efficiency.quantize.min_table_rows": (lambda v: v >= 1, "an integer >= 1"),
    "efficiency.prune.sparsity": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "efficiency.prune.begin_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "efficiency.prune.end_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "efficiency.prune.frequency": (lambda v: v >= 1, "an integer >= 1"),
    "efficiency.prune.popularity_power": (lambda v: v >= 0, "a number >= 0"),
    "efficiency.distill.weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "efficiency.lora.rank": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "efficiency.lora.alpha": (lambda v: v > 0, "a number > 0"),
    "efficiency.lora.targets": (lambda v: _is_regex(v) and v != "", "a non-empty regular expression"),
    "efficiency.lora.also_train": (lambda v: _is_regex(v), "a regular expression ('' = adapters only)"),
    "efficiency.distill.temperature": (lambda v: v > 0, "a number > 0"),
}


def _is_regex(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


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
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(f"{key} key", k, key_tp): _coerce(f"{key}.{k}", v, value_tp) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported schema type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, validating every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    for key in values:
        if key not in names:
            section = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed keys in {section}: {names}")
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        key, tp, value = f"{prefix}{name}", hints[name], values[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
            continue
        value = _coerce(key, value, tp)
        if typing.get_origin(tp) is dict and fields[name].default_factory is not dataclasses.MISSING:
            value = {**fields[name].default_factory(), **value}  # a mapping extends its defaults
        if key in _RANGES and value is not None:
            check, allowed = _RANGES[key]
            if not check(value):
                raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")
        kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.num_layers=2'`` -> ``('model.num_layers', 2)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def config_tree(source: str | Path | dict[str, Any] | Any | None,
                overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain nested mapping a config source describes, with dotted overrides applied.

    ``source``: a YAML path, a mapping, a config dataclass (anything with ``to_dict``) or
    ``None``; ``overrides``: CLI-style ``["train.epochs=3"]`` or a mapping ``{"train.epochs": 3}``
    (keyword arguments arrive as the latter, with ``__`` standing for ``.``). Shared by every
    config schema (``Config``, ``ecomjax.search.config.SearchConfig``).
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif hasattr(source, "to_dict"):
        tree = source.to_dict()
    elif isinstance(source, dict):
        tree = yaml.safe_load(yaml.safe_dump(source))  # deep copy, plain types only
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    if isinstance(overrides, dict):
        pairs = [(k.replace("__", "."), v) for k, v in overrides.items()]
    else:
        pairs = [parse_override(o) for o in overrides or []]
    for key, value in pairs:
        _set_dotted(tree, key, value)
    return tree


TASKS = ("multi_behavior", "ranker", "search")  # ``task:`` values beside the default next-item recommender


def declared_task(source: Any) -> str | None:
    """The ``task:`` a config source declares (``search``, ``ranker``, ...), or None for the
    default next-item recommender. A config object answers with its ``task`` attribute; a
    YAML file that does not parse answers None (loading it then reports the syntax error)."""
    if isinstance(source, dict):
        task = source.get("task")
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            return None
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return None
        task = tree.get("task") if isinstance(tree, dict) else None
    else:
        task = getattr(source, "task", None)
    return task if isinstance(task, str) else None


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Resolve a config from a YAML path, a dict or a Config, then apply dotted overrides.

    ``overrides`` is either CLI-style ``["train.epochs=3"]`` or a mapping
    ``{"train.epochs": 3}`` (keyword arguments of ``ecomjax.train`` arrive as the latter, with
    ``__`` standing for ``.`` so that ``train__epochs=3`` works as a Python keyword).
    """
    tree = config_tree(source, overrides)
    if "task" in tree:  # the other tasks have their own loaders (``ecomjax.train`` dispatches)
        raise ConfigError(f"task: {tree['task']!r} is not a task; tasks: {sorted(TASKS)} (none: a next-item "
                          "recommender)" if tree["task"] not in TASKS else
                          f"task: {tree['task']!r} configs are loaded by ecomjax.train, not load_config")
    return _build(Config, tree, "")


def save_config(config: Any, path: str | Path) -> None:
    """Write any config schema (``Config``, ``SearchConfig``, ``RankerConfig``, ...) as the YAML
    its loader reads back."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
