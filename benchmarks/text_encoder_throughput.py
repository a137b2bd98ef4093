"""Sentences per second of ``TextEncoder`` (all-MiniLM-L6-v2) on real product titles.

Prints one JSON line and writes nothing. The first pass over the titles compiles every padded
shape it meets and is not timed; the timed passes then run on compiled code only, which is what a
serving loop sees. For the PyTorch side see shared/notes/peers.md (sentence-transformers on the
same CPU: 224 titles/s at batch 64).

    python -m benchmarks.text_encoder_throughput [--count 1024] [--batch-size 64] [--dtype float32]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

from ecomjax.encoders import TextEncoder

ROOT = Path(__file__).resolve().parent.parent


def beauty_titles(count: int) -> list[str]:
    data = Path(os.environ.get("ECOMJAX_DATA_DIR", ROOT.parent / "shared" / "data"))
    with (data / "amazon-beauty" / "Beauty_titles.tsv").open(encoding="utf-8", newline="") as f:
        titles = [row["title"] for row in csv.DictReader(f, delimiter="\t") if row["title"]]
    return titles[:count]


def throughput(encoder: TextEncoder, texts: list[str], batch_size: int, repeats: int) -> dict:
    """Best of ``repeats`` timed passes, after one untimed pass that compiles the shapes."""
    encoder.encode(texts, batch_size=batch_size)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size)
        seconds.append(time.perf_counter() - start)
    return {"sentences": len(texts), "batch_size": batch_size,
            "sentences_per_second": round(len(texts) / min(seconds), 1),
            "seconds": [round(s, 3) for s in seconds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1024, help="titles to encode per pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default="sentence-transformers/all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    encoder = TextEncoder.from_pretrained(args.checkpoint, dtype=args.dtype)
    result = throughput(encoder, beauty_titles(args.count), args.batch_size, args.repeats)
    print(json.dumps({"dtype": args.dtype, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
