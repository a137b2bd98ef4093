"""Pretrained encoders: text and photos to vectors, with weights converted from their published
formats (the NNX networks themselves are ``ecomjax.models.bert`` and ``ecomjax.models.image``).

Names resolve lazily (PEP 562), so ``import ecomjax.encoders`` stays cheap, resolving a checkpoint
does not start JAX, and a module missing from a checkout only fails when one of its names is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SentenceHead": "text",
    "TextEncoder": "text",
    "load_tokenizer": "text",
    "ImageEncoder": "image",
    "efficientnet_lite0": "image",
    "preprocess": "image",
    "resolve_weights": "image",
    "CheckpointNotFoundError": "weights",
    "DEFAULT_TEXT_CHECKPOINT": "weights",
    "KNOWN_PACKAGES": "weights",
    "WeightsPackage": "weights",
    "cache_dir": "weights",
    "resolve_checkpoint": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
