"""A tiny random BERT checkpoint folder in the Hugging Face layout, written by the tests.

The checkpoint tests compare it against references; the loop tests use it as the text encoder of
search runs, where what matters is the loop (resume, meshes), not what MiniLM knows, and a
96-wide, 3-layer network fine-tunes in a fraction of MiniLM's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 96, 3, 4, 192, 64

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORD_LINES = """
the a an and or of to in for on with at by from is are was be it this that as not no new
set kit pack pair size color black white red blue green grey gray pink brown gold silver
wood metal steel plastic glass cotton wool leather water light power tool tools drill saw
hammer screw bolt nut paint brush lamp bulb table chair desk door floor wall window garden
hose pipe cable wire battery charger phone case cover screen shoe shoes boot boots shirt
dress jacket coat bag watch ring face cream oil soap hair skin care gel spray brand pro
mini max small large big long short soft hard fast slow cold hot best top sale men women
kids baby home kitchen bath room cafe resume naive fiance over under inch foot mm cm kg
run walk make work play read write buy sell cut fit use wash dry clean open close lock
"""
WORDS = WORD_LINES.split()
PIECE_LINES = """
##s ##es ##ed ##ing ##er ##ers ##est ##ly ##y ##ies ##tion ##ness ##ful ##less ##able
##al ##ic ##ous ##ive ##ment ##proof ##light ##ware
"""
PIECES = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + PIECE_LINES.split()
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
PUNCT = list(".,;:!?-'\"()/&%$#+*=")
CASED = ["The", "Drill", "Cafe", "Café", "DeWalt", "##W", "##alt", "##é", "é"]
VOCAB = list(dict.fromkeys([*SPECIAL, *PUNCT, *CHARS, *WORDS, *PIECES, *CASED]))


@dataclass
class Variant:
    """One tiny checkpoint: what its files say, and the head the reference must apply."""

    name: str
    tokenizer: str = "both"  # "json", "vocab" or "both"
    pooling: str | None = "mean"  # what 1_Pooling/config.json says; None: no sentence files
    normalize: bool = True
    prefix: str = ""  # tensor-name prefix ("bert." for a BertForMaskedLM save)
    heads: int = HEADS
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    lowercase: bool = True
    strip_accents: bool | None = None
    pooler: bool = False  # bge / e5 ship BertModel's pooler
    extra: dict[str, Any] = field(default_factory=dict)  # config.json overrides



def random_tensors(seed: int = 0, *, pooler: bool = False) -> dict[str, np.ndarray]:
    """A ``BertModel`` state dict, float32, large enough weights that every layer matters."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(prefix):
        return {f"{prefix}.weight": (1.0 + normal(HIDDEN)).astype(np.float32),
                f"{prefix}.bias": normal(HIDDEN)}

    t = {"embeddings.word_embeddings.weight": normal(len(VOCAB), HIDDEN, scale=0.5),
         "embeddings.position_embeddings.weight": normal(POSITIONS, HIDDEN, scale=0.2),
         "embeddings.token_type_embeddings.weight": normal(2, HIDDEN, scale=0.2),
         **norm("embeddings.LayerNorm")}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name, (d_out, d_in) in {"attention.self.query": (HIDDEN, HIDDEN),
                                    "attention.self.key": (HIDDEN, HIDDEN),
                                    "attention.self.value": (HIDDEN, HIDDEN),
                                    "attention.output.dense": (HIDDEN, HIDDEN),
                                    "intermediate.dense": (INTERMEDIATE, HIDDEN),
                                    "output.dense": (HIDDEN, INTERMEDIATE)}.items():
            t[f"{p}{name}.weight"] = normal(d_out, d_in, scale=1.5 / np.sqrt(d_in))
            t[f"{p}{name}.bias"] = normal(d_out)
        t |= norm(f"{p}attention.output.LayerNorm") | norm(f"{p}output.LayerNorm")
    if pooler:
        t |= {"pooler.dense.weight": normal(HIDDEN, HIDDEN), "pooler.dense.bias": normal(HIDDEN)}
    return t


def hf_config(variant: Variant) -> dict[str, Any]:
    """config.json as transformers 5's ``BertConfig.save_pretrained`` writes it."""
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": variant.heads,
        "intermediate_size": INTERMEDIATE, "hidden_act": variant.hidden_act,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
        "layer_norm_eps": variant.layer_norm_eps, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0,
        "is_decoder": False, "add_cross_attention": False, "transformers_version": "5.0.0",
        **variant.extra,
    }


def build_tokenizer_json(path: Path, variant: Variant) -> None:
    """tokenizer.json assembled from ``tokenizers`` components (not from ecomjax's builder)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=variant.strip_accents,
        lowercase=variant.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tokenizer.enable_truncation(128)  # the file's own limit; the encoder's max_length replaces it
    tokenizer.save(str(path))


def write_checkpoint(directory: Path, variant: Variant, seed: int = 0,
                     tensors: dict[str, np.ndarray] | None = None) -> Path:
    """A complete tiny checkpoint folder, as a Hugging Face repository would hold it."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(variant), indent=2))
    if tensors is None:
        tensors = random_tensors(seed, pooler=variant.pooler)
        tensors = {variant.prefix + name: value for name, value in tensors.items()}
        if variant.prefix:  # the masked-LM head a BertForMaskedLM save carries beside the encoder
            tensors["cls.predictions.bias"] = np.zeros(len(VOCAB), np.float32)
            tensors["cls.predictions.transform.dense.weight"] = np.eye(HIDDEN, dtype=np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    if variant.tokenizer in ("vocab", "both"):
        (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    if variant.tokenizer in ("json", "both"):
        build_tokenizer_json(directory / "tokenizer.json", variant)
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": variant.lowercase,
                        "model_max_length": 512, "unk_token": "[UNK]", "sep_token": "[SEP]",
                        "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    if variant.strip_accents is not None:
        tokenizer_config["strip_accents"] = variant.strip_accents
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if variant.pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if variant.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules))
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": 48, "do_lower_case": False}))
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": variant.pooling == "cls",
            "pooling_mode_mean_tokens": variant.pooling == "mean",
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    return directory
