"""Images per second of the EfficientNet-Lite0 image encoder, end to end, on JAX's default device.

What is timed is ``ImageEncoder.encode`` on one batch of decoded uint8 photos, as a catalogue
job calls it: host-to-device copy, centre crop, bicubic resize, normalisation, the network and
the copy of the pooled features back. Random pixels stand in for photos (the work does not
depend on them); the catalogue's photos are 128x128. The result is printed, never written:
``benchmarks/results/`` holds curated runs only.

    python -m benchmarks.image_throughput                       # batch 64, float32
    python -m benchmarks.image_throughput --dtype bfloat16 --iters 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from ecomjax.bench.timing import time_callable
from ecomjax.encoders.image import ImageEncoder

ROOT = Path(__file__).resolve().parent.parent


def image_throughput(batch_size: int = 64, *, image_side: int = 128, dtype: str = "float32",
                     warmup: int = 1, iters: int = 3) -> dict:
    """Median images/s of ``encode`` over ``iters`` batches, after ``warmup`` (compile included)."""
    encoder = ImageEncoder(dtype=dtype)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, image_side, image_side, 3),
                                               dtype=np.uint8)
    timing = time_callable(encoder.encode, images, batch_size=batch_size, warmup=warmup,
                           iters=iters)
    return {
        "model": "efficientnet-lite0", "batch_size": batch_size, "image_side": image_side,
        "dtype": dtype, "device": str(jax.devices()[0].device_kind),
        "images_per_second": timing.throughput(batch_size),
        "first_call_seconds": timing.first_call_seconds, "p50_batch_seconds": timing.p50,
        "iters": timing.iters,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-side", type=int, default=128, help="side of the square inputs")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(image_throughput(args.batch_size, image_side=args.image_side,
                                      dtype=args.dtype, warmup=args.warmup, iters=args.iters)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
