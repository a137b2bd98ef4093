"""Shared fixtures. Real-data tests read $ECOMJAX_DATA_DIR; under CI a missing file fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One compilation cache for the session and the processes it starts (killed-and-resumed runs, the
# 8-device runs compile the programs the in-process runs compiled): same programs, less waiting.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ecomjax-tests-xla-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def real_data(relative: str) -> Path:
    """Path of a real dataset file, or skip (locally) / fail (when CI is set) if it is absent."""
    root = os.environ.get("ECOMJAX_DATA_DIR")
    path = Path(root) / relative if root else None
    if path is None or not path.is_file():
        message = f"real data {relative!r} not found (ECOMJAX_DATA_DIR={root!r})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def beauty_path() -> Path:
    return real_data("amazon-beauty/Beauty.txt")
