"""Finding data files, and the error every reader raises for a file that breaks its format.

Configs name real datasets relative to the data directory (``amazon-beauty/Beauty.txt``,
``taobao``) so the same config works on a laptop, in CI and on a TPU VM: a path is taken as
given when it exists, else under ``$ECOMJAX_DATA_DIR``. This is the one place that reads that
variable.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_VARIABLE = "ECOMJAX_DATA_DIR"


class DataFormatError(ValueError):
    """A data file that does not follow its format; the message names the file and line."""


def data_dir() -> Path | None:
    """``$ECOMJAX_DATA_DIR`` as a path, or None when unset."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else None


def resolve_data_path(path: str | Path, *, directory: bool = False, key: str = "data.path") -> Path:
    """Find a data file (or, with ``directory``, a folder): as given, else under ``$ECOMJAX_DATA_DIR``.

    A missing one raises ``FileNotFoundError`` naming the config ``key``, the path and where it
    was looked for.
    """
    exists = Path.is_dir if directory else Path.is_file
    candidate = Path(path).expanduser()
    if exists(candidate):
        return candidate
    root = data_dir()
    if root is not None and not candidate.is_absolute() and exists(root / candidate):
        return root / candidate
    where = f" or under {DATA_DIR_VARIABLE}={root}" if root else f" ({DATA_DIR_VARIABLE} is not set)"
    kind = "directory" if directory else "file"
    raise FileNotFoundError(f"{key}: {kind} {str(path)!r} not found as given{where}")
