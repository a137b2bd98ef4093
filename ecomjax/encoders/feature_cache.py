"""Encode once, reuse everywhere: pretrained-encoder outputs cached on disk by content.

A frozen encoder maps the same inputs to the same vectors, so title embeddings of a catalogue or
pooled features of its photos are computed once (minutes on a CPU) and then read back in
milliseconds by every training run, test and benchmark. The cache key is a SHA-256 over
everything that decides the output: the encoder (name and weight files' sizes), the settings,
and the inputs themselves (every text, or the image archive's bytes and the ids read from it).
A different title, another checkpoint or a changed setting therefore can never hit a stale
entry. Files go to ``$ECOMJAX_CACHE_DIR/features`` (default ``~/.cache/ecomjax/features``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecomjax.encoders.weights import cache_dir


def content_key(parts: Mapping[str, Any], texts: Iterable[str] = (),
                arrays: Iterable[np.ndarray] = ()) -> str:
    """Hex SHA-256 of JSON-serialisable ``parts``, then every text and array, in order."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))  # length-prefixed: no ambiguity
        digest.update(encoded)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (weights, image archives): a renamed copy hits the same entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_fingerprint(path: str | Path) -> dict[str, int]:
    """``{file name: size}`` of a checkpoint directory: cheap, and changes with any re-export."""
    root = Path(path)
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def features_dir() -> Path:
    return cache_dir() / "features"


def cached_array(kind: str, key: str, compute: Callable[[], np.ndarray], *,
                 enabled: bool = True) -> np.ndarray:
    """``compute()``'s array, stored as ``features/<kind>-<key[:24]>.npy`` and reused.

    Writes go to a temporary file renamed into place, so a run killed mid-write (or two
    processes computing the same entry) never leaves a truncated file behind. An unreadable
    entry is recomputed rather than trusted.
    """
    if not enabled:
        return compute()
    path = features_dir() / f"{kind}-{key[:24]}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    array = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, array, allow_pickle=False)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return array


def cached_text_embeddings(texts: list[str], checkpoint: str = "sentence-transformers/all-MiniLM-L6-v2",
                           *, batch_size: int = 64, max_length: int | None = None,
                           enabled: bool = True) -> np.ndarray:
    """``[len(texts), D]`` sentence embeddings of ``texts`` (``TextEncoder``), cached by content."""
    from ecomjax.encoders.text import TextEncoder
    from ecomjax.encoders.weights import resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    key = content_key({"encoder": "text", "checkpoint": directory_fingerprint(directory),
                       "max_length": max_length}, texts)

    def compute() -> np.ndarray:
        encoder = TextEncoder.from_pretrained(directory, max_length=max_length)
        return encoder.encode(texts, batch_size=batch_size)

    return cached_array("text", key, compute, enabled=enabled)
