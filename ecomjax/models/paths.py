"""One name per parameter: ``blocks/0/attention_norm/scale``.

Everything that selects or stores parameters by name uses this one spelling: pruning targets,
LoRA targets and ``also_train``, optimizer labels and learning-rate scales, ``train.init_from``,
exported weight files. It accepts a pytree key path (``jax.tree_util`` keys, as optax and
``tree_flatten_with_path`` give them) or an NNX path tuple (``nnx.to_flat_state``), and drops a
Variable's own ``value`` key, so a path names the parameter, not the box that holds it; a
module that is itself called ``value`` (BERT's attention) keeps its name.
"""

from __future__ import annotations

from typing import Any

import jax

_KEY = jax.tree_util


def param_path(path: tuple) -> str:
    """``"a/b/0/c"`` from a pytree key path or an NNX path tuple (see the module doc)."""
    parts = []
    for key in path:
        if isinstance(key, _KEY.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, _KEY.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, _KEY.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, _KEY.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    if path and isinstance(path[-1], _KEY.GetAttrKey) and path[-1].name == "value":
        parts.pop()
    return "/".join(parts)


def flat_params(tree: Any) -> dict[str, Any]:
    """``{param_path: leaf}`` of every array leaf of ``tree`` (an NNX state or any pytree)."""
    return {param_path(path): leaf for path, leaf in _KEY.tree_flatten_with_path(tree)[0]}
