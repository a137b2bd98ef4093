"""Attribute-query product retrieval: a query tower, a fused product tower, in-batch softmax.

A shopper types "navy tee for him"; the catalogue has titles without colour words and photos.
The query tower maps the query's MiniLM sentence embedding through an MLP; the product tower is
a ``FusionHead`` over the title's token states and the photo's feature map (or one modality, for
the ablation). Both end L2-normalised in one space; a learned temperature scales their dot
product. Training pairs each query with one of its relevant products per step and uses the
batch's other products as negatives, except those that are relevant to the query too (known
from the attributes, so a second "men's black t-shirt" in the batch is not pushed away).

Relevance comes from attributes only (``ecomjax.data.fashion.compose_queries``): grade 2 when
a product has every attribute the query names, 1 when it has the article type and misses one
other attribute. Evaluation ranks every held-out product for every held-out query:
NDCG@10 with gains ``2^grade - 1`` and recall@10 of the grade-2 products (capped: hits over
``min(relevant, 10)``, so a query with 300 relevant products can still reach 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecomjax.data.fashion import QUERY_FIELDS, AttributeQuery, Product, render_query
from ecomjax.data.fashion_features import FashionFeatures
from ecomjax.eval.graded import ndcg_rows
from ecomjax.models.fusion import MLP, FusionConfig, FusionHead
from ecomjax.tasks.attributes import device_features, gather
from ecomjax.tasks.fit import FitConfig, FitResult, fit, map_row_batches

CODE_FIELDS = ("article_type", *QUERY_FIELDS)  # article type first: near misses must share it
UNKNOWN, UNSPECIFIED = -1, -2  # product value missing; attribute not named by the query


# ---------------------------------------------------------------------------- relevance
def attribute_codes(products: Sequence[Product], values: dict[str, dict[str, int]]) -> np.ndarray:
    """``[N, 5]`` integer codes of each product's attributes (``UNKNOWN`` where NA)."""
    return np.array([[UNKNOWN if getattr(p, f) is None else values[f].setdefault(getattr(p, f), len(values[f]))
                      for f in CODE_FIELDS] for p in products], dtype=np.int32).reshape(-1, len(CODE_FIELDS))


def query_codes(queries: Sequence[AttributeQuery], values: dict[str, dict[str, int]]) -> np.ndarray:
    """``[Q, 5]`` codes of the attributes each query names (``UNSPECIFIED`` elsewhere)."""
    return np.array([[values[f].setdefault(q.attributes[f], len(values[f])) if f in q.attributes
                      else UNSPECIFIED for f in CODE_FIELDS] for q in queries],
                    dtype=np.int32).reshape(-1, len(CODE_FIELDS))


def relevance_grades(queries: jax.Array | np.ndarray, products: jax.Array | np.ndarray):
    """``[Q, N]`` grades: 2 = every named attribute matches, 1 = same article type and exactly
    one other named attribute differs, 0 otherwise. Works on numpy and jax arrays alike."""
    xp = jnp if isinstance(queries, jax.Array) else np
    named = queries[:, None, :] != UNSPECIFIED
    differs = named & (queries[:, None, :] != products[None, :, :])
    misses = differs.sum(-1)
    same_type = ~differs[..., 0]
    return xp.where(misses == 0, 2, xp.where(same_type & (misses == 1), 1, 0)).astype(xp.int32)


def ranking_metrics(scores: np.ndarray, grades: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean NDCG@k (gain ``2^g - 1``) and capped recall@k of grade-2 items over queries."""
    relevant = (grades == 2).sum(1)
    if not (relevant > 0).all():
        raise ValueError(f"{int((relevant == 0).sum())} queries have no relevant product in the pool")
    gains = 2.0 ** grades - 1
    top = np.lexsort((gains, -scores), axis=-1)[:, :k]  # the tie rule of ecomjax.eval.graded
    hits = (np.take_along_axis(grades, top, axis=1) == 2).sum(1)
    return {f"ndcg@{k}": float(np.mean(ndcg_rows(scores, gains, k))),
            f"recall@{k}": float(np.mean(hits / np.minimum(relevant, k)))}


# ---------------------------------------------------------------------------- model
class QueryTower(nnx.Module):
    def __init__(self, query_dim: int, fusion: FusionConfig, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(query_dim, rngs=rngs)
        self.mlp = MLP(query_dim, fusion.mlp_size, fusion.output_dim, fusion.dropout,
                       jnp.dtype(fusion.compute_dtype), rngs=rngs)

    def __call__(self, queries: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
        return self.mlp(self.norm(queries), deterministic=deterministic, rngs=rngs).astype(jnp.float32)


class TwoTower(nnx.Module):
    def __init__(self, query_dim: int, fusion: FusionConfig, *, rngs: nnx.Rngs,
                 temperature: float = 0.05):
        self.query = QueryTower(query_dim, fusion, rngs=rngs)
        self.product = FusionHead(fusion, rngs=rngs)
        self.log_scale = nnx.Param(jnp.log(jnp.float32(1.0 / temperature)))

    def embed_queries(self, queries, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return _unit(self.query(queries, deterministic=deterministic, rngs=rngs))

    def embed_products(self, text, mask, image, *, deterministic: bool = True, rngs=None) -> jax.Array:
        return _unit(self.product(text, image, mask, deterministic=deterministic, rngs=rngs))

    def scale(self) -> jax.Array:
        return jnp.exp(jnp.clip(self.log_scale[...], 0.0, jnp.log(100.0)))


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def retrieval_data(features: FashionFeatures, product_codes: np.ndarray, query_embeddings: np.ndarray,
                   query_codes_: np.ndarray, pairs: np.ndarray) -> dict[str, jax.Array]:
    """Device arrays: product features and codes, query embeddings and codes, training pairs
    (``[P, 2]``: query row, relevant product row)."""
    return device_features(features, product_codes=product_codes, queries=query_embeddings,
                           query_codes=query_codes_, pairs=pairs)


def in_batch_softmax_loss(model: TwoTower, data: dict, batch: jax.Array, key) -> jax.Array:
    """Cross-entropy of each query against the batch's products; other relevant ones masked."""
    pairs = data["pairs"][batch]
    query_rows, product_rows = pairs[:, 0], pairs[:, 1]
    drop_q, drop_p = jax.random.split(key)
    q = model.embed_queries(data["queries"][query_rows], deterministic=False,
                            rngs=nnx.Rngs(dropout=drop_q))
    p = model.embed_products(*gather(data, product_rows), deterministic=False,
                             rngs=nnx.Rngs(dropout=drop_p))
    logits = model.scale() * q @ p.T
    grades = relevance_grades(data["query_codes"][query_rows], data["product_codes"][product_rows])
    diagonal = jnp.eye(len(batch), dtype=bool)
    logits = jnp.where((grades == 2) & ~diagonal, -1e9, logits)  # false negatives are not negatives
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(len(batch))))


@nnx.jit
def _embed_products(model, data, rows):
    return model.embed_products(*gather(data, rows))


@nnx.jit
def _embed_queries(model, data, rows):
    return model.embed_queries(data["queries"][rows])


def evaluate_retrieval(model: TwoTower, data: dict, query_rows: np.ndarray,
                       product_rows: np.ndarray, k: int = 10) -> dict[str, float]:
    """Rank ``product_rows`` for each of ``query_rows``; grades from the attribute codes."""
    q = map_row_batches(_embed_queries, model, data, query_rows)
    p = map_row_batches(_embed_products, model, data, product_rows)
    grades = relevance_grades(np.asarray(data["query_codes"])[query_rows],
                              np.asarray(data["product_codes"])[product_rows])
    return ranking_metrics(q @ p.T, grades, k)


# ---------------------------------------------------------------------------- query sets
@dataclass
class QuerySet:
    texts: list[str]
    queries: list[AttributeQuery]  # one per text (paraphrases repeat their query)


def paraphrased(queries: Sequence[AttributeQuery], renderings: int, seed: int) -> QuerySet:
    """Each query plus ``renderings - 1`` more random wordings of the same attributes."""
    rng = np.random.default_rng(seed)
    texts, owners = [], []
    for query in queries:
        wordings = {query.text}
        for _ in range(4 * renderings):
            if len(wordings) == renderings:
                break
            wordings.add(render_query(query.attributes, rng))
        for text in sorted(wordings):
            texts.append(text)
            owners.append(query)
    return QuerySet(texts, owners)


def training_pairs(codes_q: np.ndarray, codes_p: np.ndarray, product_rows: np.ndarray,
                   per_query: int, seed: int) -> np.ndarray:
    """``[P, 2]`` (query row, product row) pairs: up to ``per_query`` relevant products each."""
    rng = np.random.default_rng(seed)
    grades = relevance_grades(codes_q, codes_p[product_rows])
    pairs = []
    for q in range(len(codes_q)):
        relevant = product_rows[grades[q] == 2]
        if len(relevant) == 0:
            raise ValueError(f"training query {q} has no relevant training product")
        chosen = rng.choice(relevant, size=min(per_query, len(relevant)), replace=False)
        pairs.extend((q, int(p)) for p in chosen)
    return np.array(pairs, dtype=np.int32)


@dataclass
class RetrievalResult:
    metrics: dict[str, dict[str, float]]  # split -> ndcg@10, recall@10
    fit: FitResult
    num_params: int


def train_two_tower(features: FashionFeatures, product_codes: np.ndarray, query_embeddings: np.ndarray,
                    codes_q: np.ndarray, pairs: np.ndarray, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                    fusion: FusionConfig, fit_config: FitConfig, k: int = 10) -> RetrievalResult:
    """Train on ``pairs``; select on ``eval_sets["valid"]`` NDCG@k; report every eval set.

    ``eval_sets[name] = (query rows, product rows)``: the queries and the product pool to rank.
    """
    if "valid" not in eval_sets:
        raise ValueError("eval_sets needs a 'valid' entry for model selection")
    data = retrieval_data(features, product_codes, query_embeddings, codes_q, pairs)
    model = TwoTower(query_embeddings.shape[1], fusion, rngs=nnx.Rngs(fit_config.seed))

    def validate(model) -> float:
        return evaluate_retrieval(model, data, *eval_sets["valid"], k)[f"ndcg@{k}"]

    result = fit(model, in_batch_softmax_loss, data, np.arange(len(pairs)), validate, fit_config)
    metrics = {name: evaluate_retrieval(model, data, *rows, k) for name, rows in eval_sets.items()}
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return RetrievalResult(metrics, result, int(num_params))
