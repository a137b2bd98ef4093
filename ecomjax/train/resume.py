"""Whether a workdir's checkpoints belong to this config, before anything is trained.

A resumed run must be the run that was interrupted: a different model or data under the same
workdir would continue someone else's parameters. The saved ``config.yaml`` is read through the
current schema (keys added since take their defaults, which leave behaviour as it was, so an
older run still resumes) and compared with this config, except for the keys that may change
between an interruption and its resumption: where the run is placed (``mesh``), how it reports
(``progress``), when it stops (``max_steps``) and whether it resumes at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ecomjax.config import RunConfig, TrainConfig, load_config
from ecomjax.errors import WorkdirError

# dotted keys (or, for train sections, their last two parts) free to differ on resume
_FREE = {"workdir", "mesh.data", "mesh.model", "mesh.rules"}  # the workdir is this directory, however spelt
_FREE_TRAIN = {"train.max_steps", "train.progress", "train.resume", "train.loggers"}
# post-training: a finished recommender may be quantized afterwards (quantization-aware training may not)
_FREE |= {f"efficiency.quantize.{key}" for key in ("weights", "activations", "tables", "min_table_rows", "module_path")}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: dotted keys, as overrides name them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _free(key: str) -> bool:
    return key in _FREE or any(key == k or key.endswith("." + k) for k in _FREE_TRAIN) or key.startswith("mesh.")


def wants_resume(config: Any) -> bool:
    """Whether any ``train`` section of the config asks to resume."""
    if isinstance(config, TrainConfig):
        return config.resume
    if dataclasses.is_dataclass(config):
        return any(wants_resume(getattr(config, f.name)) for f in dataclasses.fields(config))
    return False


def _same_value(old: Any, new: Any) -> bool:
    """Equal, or two spellings of one existing path (``./runs/x``, ``runs/x/``, absolute)."""
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str) and old and new:
        try:
            return os.path.samefile(Path(old).expanduser(), Path(new).expanduser())
        except OSError:
            return False
    return False


def check_same_run(config: RunConfig, workdir: Path) -> bool:
    """``True`` when the workdir's checkpoints (if any) may be resumed by ``config``; a resume
    into a workdir that holds another run's checkpoints is an error naming the keys that
    differ. With every ``train.resume`` false the old run is to be replaced (``False``): the
    loop sets it aside and deletes it only once the new run has a checkpoint."""
    prior = workdir / "config.yaml"
    checkpoints = workdir / "checkpoints"
    if not prior.is_file() or not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        return True
    if not wants_resume(config):
        return False
    old = _flat(json.loads(json.dumps(load_config(prior).to_dict())))
    new = _flat(json.loads(json.dumps(config.to_dict())))
    differ = sorted(k for k in old.keys() | new.keys() if not _free(k) and not _same_value(old.get(k), new.get(k)))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise WorkdirError(f"{workdir} holds a run with another config ({shown}{more}); use another workdir, "
                           "or train.resume=false to replace it (the old run is kept until the new one has "
                           "saved a checkpoint)")
    return True
