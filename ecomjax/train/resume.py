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
from pathlib import Path
from typing import Any

from ecomjax.config import RunConfig, TrainConfig, load_config

# dotted keys (or, for train sections, their last two parts) free to differ on resume
_FREE = {"mesh.data", "mesh.model", "mesh.rules"}
_FREE_TRAIN = {"train.max_steps", "train.progress", "train.resume"}
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


def check_same_run(config: RunConfig, workdir: Path) -> bool:
    """``True`` when the workdir's checkpoints (if any) may be resumed by ``config``; a resume
    into a workdir that holds another run's checkpoints is an error naming the keys that
    differ. With every ``train.resume`` false the old checkpoints are replaced, and nothing is
    compared."""
    prior = workdir / "config.yaml"
    checkpoints = workdir / "checkpoints"
    if not prior.is_file() or not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        return True
    if not wants_resume(config):
        return False
    old = _flat(json.loads(json.dumps(load_config(prior).to_dict())))
    new = _flat(json.loads(json.dumps(config.to_dict())))
    differ = sorted(k for k in old.keys() | new.keys() if not _free(k) and old.get(k) != new.get(k))
    if differ:
        raise ValueError(f"{workdir} holds a run with a different config ({', '.join(differ)}); "
                         "use another workdir or train.resume=false")
    return True
