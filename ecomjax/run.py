"""A run: a workdir's config, metrics and trained models, and its task's inference call.

``ecomjax.train`` returns one; ``ecomjax.load(WORKDIR)`` reads one back without the dataset and
without training: the config is ``config.yaml``, the module shapes come from ``model.json`` (the
spec the task wrote: catalogue size, vocabularies, feature widths), the parameters from the
checkpoints (``best_params`` and the fixed ``buffers`` of every stage). What a trained model is
for is the task's: ``run.recommend(history, k)`` for recommenders, ``run.score(features)`` for
the ranker, ``run.search(query, k)`` for search and product retrieval, ``run.classify(ids)``
for attribute prediction.

``run.export(path)`` writes the models as one safetensors file beside ``config.yaml``,
``model.json`` and the task's other artifacts (LightGBM re-rankers, the catalogue); ``load``
reads that directory too, so a model can be served where no orbax checkpoint travels.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from ecomjax.config import RunConfig, load_config, save_config
from ecomjax.errors import ChangedDataError, InputError, MissingFileError, UnknownKeyError, warn
from ecomjax.tasks.base import Stage, Task

EXPORT_FILE = "model.safetensors"


@dataclass
class Run:
    workdir: Path
    config: RunConfig
    task: Task
    spec: dict[str, Any]
    models: dict[str, nnx.Module]  # stage name -> module at its kept parameters
    metrics: dict[str, Any] | None = None  # metrics.json (None before training has reported)
    _inference: Any = field(default=None, repr=False)

    @property
    def model(self) -> nnx.Module:
        """The run's main model (its first stage)."""
        return next(iter(self.models.values()))

    @property
    def vocab(self) -> dict[str, np.ndarray]:
        """The run's id maps (``vocab.npz``: original item ids, product ids), read on first use."""
        if "vocab" not in self.__dict__:
            path = self.workdir / "vocab.npz"
            with np.load(path, allow_pickle=False) if path.is_file() else _Empty() as archive:
                self.__dict__["vocab"] = {name: archive[name] for name in archive.files}
        return self.__dict__["vocab"]

    @property
    def inference(self) -> Any:
        """The task's inference object, built on first use."""
        if self._inference is None:
            self._inference = self.task.inference(self)
        return self._inference

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        target = self.inference
        if not hasattr(target, name):
            offered = [m for m in ("recommend", "score", "search", "classify") if hasattr(target, m)]
            raise AttributeError(f"a {self.config.task} run has no {name}(); it offers {offered}")
        return getattr(target, name)(*args, **kwargs)

    def recommend(self, *args: Any, **kwargs: Any) -> Any:
        """Recommendations for a history (recommender tasks): original item ids and scores."""
        return self._call("recommend", *args, **kwargs)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        """Per-head scores of candidates (the ranker)."""
        return self._call("score", *args, **kwargs)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        """Products for a query (search and product-retrieval runs)."""
        return self._call("search", *args, **kwargs)

    def classify(self, *args: Any, **kwargs: Any) -> Any:
        """Attributes of catalogue products (attribute runs)."""
        return self._call("classify", *args, **kwargs)

    def export(self, path: str | Path) -> Path:
        """Write ``path/model.safetensors`` (every stage's variables, ``stage/param/path``
        names), ``config.yaml``, ``model.json`` and the task's artifacts; returns ``path``."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for stage, model in self.models.items():
            for name, value in _flat_variables(model).items():
                tensors[f"{stage}/{name}"] = np.ascontiguousarray(np.asarray(value))
        save_file(tensors, str(path / EXPORT_FILE), metadata={"task": self.config.task})
        save_config(self.config, path / "config.yaml")
        (path / "model.json").write_text(json.dumps({"task": self.config.task, "spec": self.spec}, indent=1))
        for relative in self.task.artifacts():
            source = self.workdir / relative
            if source.is_dir():
                shutil.copytree(source, path / relative, dirs_exist_ok=True)
            elif source.is_file():
                (path / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, path / relative)
        return path


class _Empty:
    files: tuple = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _flat_variables(model: nnx.Module) -> dict[str, Any]:
    from ecomjax.models.paths import flat_params

    return flat_params(nnx.state(model, nnx.Not(nnx.RngState)))


def load(workdir: str | Path, *, mesh: jax.sharding.Mesh | None = None) -> Run:
    """The run in ``workdir`` (a training workdir or an ``export``), read-only: no data read, no
    training. ``mesh`` places the parameters by the run's ``mesh.rules`` (``train.init_from``,
    distillation teachers); by default everything is on the first device."""
    from ecomjax.tasks import task_class

    workdir = Path(workdir)
    for required in ("config.yaml", "model.json"):
        if not (workdir / required).is_file():
            raise MissingFileError(f"{workdir} is not a run directory (no {required}); train one with "
                                    "`ecomjax train CONFIG`")
    config = load_config(workdir / "config.yaml")
    task: Task = task_class(config.task)(config)
    task.workdir = workdir  # artifacts are read from where the run is, wherever it was trained
    spec = json.loads((workdir / "model.json").read_text())["spec"]
    exported = workdir / EXPORT_FILE
    tensors = None
    if exported.is_file() and not (workdir / "checkpoints").is_dir():
        from safetensors.numpy import load_file

        tensors = load_file(str(exported))
    models = {}
    for stage in task.stages(spec):
        models[stage.name] = (_from_tensors(stage, tensors, exported) if tensors is not None
                              else restore_stage(workdir, stage, config, mesh))
    metrics_path = workdir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return Run(workdir, config, task, spec, models, metrics)


def restore_stage(workdir: Path, stage: Stage, config: RunConfig, mesh: jax.sharding.Mesh | None) -> nnx.Module:
    """One stage's module at its kept parameters, from ``workdir/checkpoints/<stage>``."""
    from ecomjax.train.checkpoint import RunCheckpoints
    from ecomjax.train.sharding import tree_shardings
    from ecomjax.train.state import split_model

    directory = workdir / "checkpoints" / stage.name
    if not directory.is_dir():
        raise MissingFileError(f"{directory} not found: the run has not trained its {stage.name!r} model")
    graphdef, params, buffers = split_model(nnx.eval_shape(stage.build), stage.trainable())
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, (params, buffers))
    else:
        shardings = tree_shardings((params, buffers), config.mesh.rules, mesh)
    params, buffers = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   (params, buffers), shardings)
    checkpoints = RunCheckpoints(directory, read_only=True)
    try:
        if checkpoints.latest_step() is None:
            raise MissingFileError(f"{directory} holds no checkpoint")
        buffers, best, _ = checkpoints.restore_best(buffers, params)
    finally:
        checkpoints.close()
    return nnx.merge(graphdef, best, buffers)


def _from_tensors(stage: Stage, tensors: dict[str, np.ndarray], path: Path) -> nnx.Module:
    """One stage's module from an exported safetensors file; a missing or mis-shaped array is
    an error naming it."""
    model = nnx.eval_shape(stage.build)
    graphdef, state = nnx.split(model)
    from ecomjax.models.paths import param_path

    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    filled = []
    for key_path, leaf in leaves:
        name = f"{stage.name}/{param_path(key_path)}"
        if name not in tensors:
            raise UnknownKeyError(f"{path} has no array {name!r}: exported from another model?")
        value = tensors[name]
        if tuple(value.shape) != tuple(leaf.shape):
            raise InputError(f"{path}: {name} has shape {list(value.shape)}, the model expects {list(leaf.shape)}")
        filled.append(jax.numpy.asarray(value, leaf.dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, filled))


def evaluate(workdir: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-score a finished run from its kept models, on its own data or (``data.*`` overrides)
    another file of the same format; writes ``WORKDIR/eval/metrics.json`` and never touches the
    training ``metrics.json`` or the checkpoints, and never trains. Only ``data.*``, ``eval.*``
    and ``report_test`` keys may be overridden: anything else would describe another model
    (``report_test=true`` scores the test split of a hyperparameter trial, which trained without).

    The run's input files are found where training found them (``run.json``, so it works from
    any directory) and must be unchanged: an edited or grown file is refused naming it, unless
    ``eval.allow_changed_data=true``, which the result records (``changed_data``)."""
    from ecomjax.config import ConfigError
    from ecomjax.data.inputs import changed_inputs, recording_inputs
    from ecomjax.tasks import task_class
    from ecomjax.train.sharding import make_mesh
    from ecomjax.train.workdir import read_run_record, write_json_atomically

    workdir = Path(workdir).expanduser().absolute()
    overrides = {k.replace("__", "."): v for k, v in (overrides or {}).items()}
    allow_changed = overrides.pop("eval.allow_changed_data", False)
    if isinstance(allow_changed, str):
        if allow_changed.lower() not in ("true", "false"):
            raise ConfigError(f"eval.allow_changed_data: {allow_changed!r} is not true or false")
        allow_changed = allow_changed.lower() == "true"
    other = sorted(k for k in overrides if not k.startswith(("data.", "eval.")) and k != "report_test")
    if other:
        raise ConfigError(f"ecomjax eval takes data.*, eval.* and report_test overrides only, not {other}")
    if not (workdir / "config.yaml").is_file():
        raise MissingFileError(f"{workdir} is not a run directory (no config.yaml)")
    recorded = read_run_record(workdir).get("inputs", {})
    written = load_config(workdir / "config.yaml")
    # the files training read, where it found them (unless this evaluation names others)
    known = _dotted_keys(written.to_dict())
    found = {k: v["path"] for k, v in recorded.items() if k in known and k not in overrides and Path(v["path"]).exists()}
    config = load_config(workdir / "config.yaml", {**found, **overrides})
    config.workdir = str(workdir)
    mesh = make_mesh(config.mesh)
    run = load(workdir, mesh=mesh)
    task: Task = task_class(config.task)(config)
    task.workdir, task.mesh = workdir, mesh
    with jax.set_mesh(mesh):
        with recording_inputs() as inputs:
            spec = task.prepare()
        changed = changed_inputs(recorded, inputs)
        if changed and not allow_changed:
            raise ChangedDataError(f"{changed[0]}: the model in {workdir} was trained on it as it was; evaluate "
                                   "another file with data.* overrides, or pass eval.allow_changed_data=true")
        for line in changed:
            warn(f"evaluating on changed data (eval.allow_changed_data=true): {line}")
        if not any(k.startswith("data.") for k in overrides) and spec != run.spec:
            differ = sorted(k for k in spec.keys() | run.spec.keys() if spec.get(k) != run.spec.get(k))
            raise ChangedDataError(f"{workdir}: the data no longer matches the trained model ({', '.join(differ)} "
                                   "differ from model.json); was the data file changed?")
        metrics = task.report(run.models)
    if not config.report_test:
        metrics = {k: v for k, v in metrics.items() if k not in task.test_keys}
    if changed:
        metrics = {**metrics, "changed_data": changed}
    out = workdir / "eval"
    out.mkdir(exist_ok=True)
    write_json_atomically(out / "metrics.json", metrics)
    return metrics


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
    return keys
