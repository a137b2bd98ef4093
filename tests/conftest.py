"""Shared fixtures. Real-data tests read $ECOMJAX_DATA_DIR; under CI a missing file fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
