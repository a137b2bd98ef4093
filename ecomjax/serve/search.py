"""Online product search: ``SearchPipeline.search(query, user=None, k=10)``.

Normalise the query -> sentence encoder -> query tower -> HNSW top-N over the product tower's
vectors -> features of the N candidates (``SearchModels.fast_features``, the function the
re-rankers were trained on) -> re-ranker -> optional blend with a user-history model's scores ->
top k. Each stage is timed, so the latency benchmark can say where the time goes.

``search_batch(..., rows=R)`` pads the encoder and the query tower to ``R`` rows (a power of two),
so a server that batches requests compiles a handful of shapes once (``warm``). ``add_products``
puts new or re-titled products into the catalogue and the HNSW graph without a rebuild; an
updated product's old graph node is skipped at search time (HNSW cannot delete). Neither is
safe beside a concurrent search: the server runs both on one worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from ecomjax.data.relevance import normalize_text
from ecomjax.errors import InputError
from ecomjax.search.features import lexical_features
from ecomjax.search.models import SearchModels, tower_vectors
from ecomjax.serve.batching import padded_rows


@dataclass
class SearchResult:
    product_ids: list[str]
    titles: list[str]
    scores: np.ndarray
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Retrieved:
    """``SearchPipeline.retrieve``'s output: what ``rank`` needs of each query."""

    normalized: list[str]
    frozen: np.ndarray  # [queries, D] sentence vectors
    tower: np.ndarray  # [queries, D'] query-tower vectors
    found: np.ndarray  # [queries, candidates] catalogue rows, -1 = none
    started: float  # perf_counter at the start (the total includes any wait between the halves)
    timings: dict[str, float]

    def subset(self, rows: Sequence[int]) -> Retrieved:
        rows = list(rows)
        return Retrieved([self.normalized[i] for i in rows], self.frozen[rows], self.tower[rows], self.found[rows],
                         self.started, self.timings)


class SearchPipeline:
    """Online search over a trained workdir's catalogue.

    ``personalizer(user, product_ids) -> scores`` (optional) is any user-history model whose
    scores are comparable across products, e.g. ``HistoryPersonalizer`` over a trained
    next-item recommender; its z-scored scores are added with ``serve.personalization_weight``.
    """

    def __init__(self, models: SearchModels, catalogue_ids: np.ndarray, catalogue_titles: np.ndarray, *,
                 index=None, personalizer: Callable[[Any, Sequence[str]], np.ndarray] | None = None):
        from ecomjax.encoders.text import TextEncoder
        from ecomjax.serve.ann import HNSWIndex

        self.models, self.config = models, models.config
        self.ids = np.asarray(catalogue_ids, dtype=str)
        self.titles = np.asarray([normalize_text(t) for t in catalogue_titles], dtype=object)
        self.raw_titles = np.asarray(catalogue_titles, dtype=str)
        self.encoder = TextEncoder.from_pretrained(self.config.encoder)
        # queries are a few word pieces: an 8-token bucket halves the encoder's work against 16
        # (padding is masked, so the embedding is the same whatever the bucket)
        self.encoder.length_buckets = tuple(sorted({8, *self.encoder.length_buckets}))
        vectors, index_of = models.frozen_vectors(list(self.titles))
        self.frozen = vectors[index_of]
        self.product_vectors = tower_vectors(models.bi_encoder, vectors, "product")[index_of]
        s = self.config.serve
        self.index = index or HNSWIndex(self.product_vectors, m=s.hnsw_m, ef_construction=s.hnsw_ef_construction,
                                        ef_search=max(s.hnsw_ef_search, s.candidates))
        self.personalizer = personalizer
        self.prior = models.prior.features(list(self.ids))  # [rows, 2]: per product, not per candidate
        self.row_of = {str(p): row for row, p in enumerate(self.ids)}
        self.alive = np.ones(len(self.ids), bool)  # False: a graph node superseded by an update
        # the tower as a plain jitted function of pre-split parameters: nnx.jit would flatten the
        # module graph on every call (~2 ms, more than the tower itself at batch 1)
        graphdef, state = nnx.split(models.bi_encoder)
        tower = jax.jit(lambda state, x: nnx.merge(graphdef, state).embed_queries(x))
        self._query_tower = lambda x: tower(state, x)
        # every title parsed once now, so a request parses only its query
        lexical_features(list(self.titles), list(self.titles), cache=self.models._parse_cache)
        self.models.bm25.text_scores(list(self.titles), list(self.titles))

    @classmethod
    def load(cls, workdir: str | Path, **kwargs) -> SearchPipeline:
        """The pipeline of a trained relevance workdir (``ecomjax.load(workdir).search`` is this)."""
        return cls.from_models(SearchModels.load(workdir), workdir, **kwargs)

    @classmethod
    def from_models(cls, models: SearchModels, workdir: str | Path, **kwargs) -> SearchPipeline:
        workdir = Path(workdir)
        with np.load(workdir / "catalogue.npz") as archive:
            ids, titles = archive["ids"], archive["titles"]
        index = None
        if (workdir / "hnsw.faiss").is_file():
            from ecomjax.serve.ann import HNSWIndex

            serve = models.config.serve
            index = HNSWIndex.load(workdir / "hnsw.faiss", max(serve.hnsw_ef_search, serve.candidates))
            if index.size != len(ids):
                raise InputError(f"{workdir}/hnsw.faiss indexes {index.size} products but the catalogue has "
                                 f"{len(ids)}: the workdir is inconsistent; delete hnsw.faiss to rebuild it")
        return cls(models, ids, titles, index=index, **kwargs)

    def save_index(self, workdir: str | Path) -> None:
        self.index.save(Path(workdir) / "hnsw.faiss")

    def encode_queries(self, queries: Sequence[str], rows: int | None = None
                       ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Normalised queries, their sentence vectors and query-tower vectors; ``rows`` pads the
        encoder's and the tower's batches to a power of two up to ``rows``."""
        normalized = [normalize_text(q) for q in queries]
        for original, text in zip(queries, normalized, strict=True):
            if not text:
                raise InputError(f"query {original!r} is empty after normalisation")
        frozen = self.encoder.encode(normalized, batch_size=max(rows or len(normalized), 1))
        padded = frozen
        if rows:
            padded = np.zeros((padded_rows(len(frozen)), frozen.shape[1]), np.float32)
            padded[:len(frozen)] = frozen
        tower = np.asarray(self._query_tower(padded))[:len(frozen)]
        return normalized, frozen, tower

    def warm(self, max_rows: int, max_words: int = 32) -> None:
        """Compile the encoder and the tower for every padded batch up to ``max_rows`` and every
        query length bucket up to ``max_words`` word pieces."""
        rows = 1
        while rows <= max_rows:
            for length in (b for b in self.encoder.length_buckets if b <= max_words):
                query = " ".join(["drill"] * max(length - 2, 1))  # CLS + pieces + SEP fill the bucket
                self.search_batch([query] * rows, None, 1, rows=max_rows)
            rows *= 2

    def query_pieces(self, query: str) -> int:
        """Word pieces of a normalised query with its special tokens (what picks the bucket)."""
        return len(self.encoder.tokenize([normalize_text(query)])[0])

    def add_products(self, product_ids: Sequence[str], titles: Sequence[str]) -> list[int]:
        """Make products searchable: new ids get new rows, known ids a new row that replaces
        their old one. All vectors are computed before anything changes. Returns the rows."""
        normalized = [normalize_text(t) for t in titles]
        for pid, text in zip(product_ids, normalized, strict=True):
            if not text:
                raise InputError(f"product {pid!r}: title is empty after normalisation")
        vectors, index_of = self.models.frozen_vectors(normalized)
        frozen = vectors[index_of]
        product = tower_vectors(self.models.bi_encoder, vectors, "product")[index_of]
        lexical_features(normalized, normalized, cache=self.models._parse_cache)
        start = len(self.ids)
        rows = list(range(start, start + len(normalized)))
        alive = np.ones(len(normalized), bool)
        last = {str(p): i for i, p in enumerate(product_ids)}  # a product named twice: its last title
        alive[[i for i, p in enumerate(product_ids) if last[str(p)] != i]] = False
        self.index.add(product)
        self.ids = np.concatenate([self.ids, np.asarray(product_ids, dtype=str)])
        self.titles = np.concatenate([self.titles, np.asarray(normalized, dtype=object)])
        self.raw_titles = np.concatenate([self.raw_titles, np.asarray(titles, dtype=str)])
        self.frozen = np.concatenate([self.frozen, frozen])
        self.product_vectors = np.concatenate([self.product_vectors, product])
        self.prior = np.concatenate([self.prior, self.models.prior.features(list(product_ids))])
        self.alive = np.concatenate([self.alive, alive])
        for pid, row in zip(product_ids, rows, strict=True):
            if alive[row - start]:
                old = self.row_of.get(str(pid))
                if old is not None:
                    self.alive[old] = False
                self.row_of[str(pid)] = row
        return [self.row_of[str(p)] for p in product_ids]

    def _candidates(self, tower: np.ndarray, n: int) -> np.ndarray:
        """``[queries, n]`` catalogue rows from the graph, superseded rows skipped (-1 pads)."""
        dead = int(len(self.alive) - self.alive.sum())
        if not dead:
            return self.index.search(tower, n)[1]
        fetch = n + min(dead, 4 * n)
        self.index.ef_search = max(self.index.ef_search, fetch)
        _, found = self.index.search(tower, fetch)
        out = np.full((len(found), n), -1, found.dtype)
        for i, rows in enumerate(found):
            kept = rows[(rows >= 0) & self.alive[np.maximum(rows, 0)]][:n]
            out[i, :len(kept)] = kept
        return out

    def search(self, query: str, user: Any = None, k: int = 10, *, candidates: int | None = None,
               reranker: str | None = None) -> SearchResult:
        return self.search_batch([query], None if user is None else [user], k, candidates=candidates,
                                 reranker=reranker)[0]

    def search_batch(self, queries: Sequence[str], users: Sequence[Any] | None = None, k: int = 10, *,
                     candidates: int | None = None, reranker: str | None = None,
                     rows: int | None = None) -> list[SearchResult]:
        """Top-``k`` products for each query; timings per stage (ms, for the whole batch)."""
        return self.rank(self.retrieve(queries, candidates=candidates, rows=rows), users, k, reranker=reranker)

    def retrieve(self, queries: Sequence[str], *, candidates: int | None = None,
                 rows: int | None = None) -> Retrieved:
        """The first half of a search: query vectors and the graph's candidates. Mostly
        compiled and native code (the encoder, FAISS), so a server can run it for one batch
        while ``rank`` runs the Python feature code of the previous one."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; use search() for one query")
        n_candidates = candidates or self.config.serve.candidates
        started = time.perf_counter()
        normalized, frozen, tower = self.encode_queries(queries, rows)
        encoded = time.perf_counter()
        found = self._candidates(tower, n_candidates)
        timings = {"encode": 1e3 * (encoded - started), "ann": 1e3 * (time.perf_counter() - encoded)}
        return Retrieved(normalized, frozen, tower, found, started, timings)

    def rank(self, retrieved: Retrieved, users: Sequence[Any] | None = None, k: int = 10, *,
             reranker: str | None = None) -> list[SearchResult]:
        """The second half: features of the candidates, re-ranker, personalisation, top ``k``."""
        normalized, frozen, tower, found = retrieved.normalized, retrieved.frozen, retrieved.tower, retrieved.found
        n_queries, n_candidates = found.shape
        reranker = reranker or self.config.serve.reranker
        if not 1 <= k <= n_candidates:
            raise InputError(f"k must be in [1, {n_candidates}] (the candidates re-ranked), got {k}")
        t = {"start": time.perf_counter()}
        flat = found.reshape(-1)
        flat = np.where(flat < 0, 0, flat)  # HNSW pads with -1 when it finds fewer (not at N=100)
        repeat = np.repeat(np.arange(n_queries), n_candidates)
        features = self.models.fast_features(
            [normalized[i] for i in repeat], list(self.titles[flat]), None,
            frozen[repeat], self.frozen[flat], tower[repeat], self.product_vectors[flat], self.prior[flat])
        t["features"] = time.perf_counter()
        if reranker == "gbdt_fast":
            # one thread: for 100-3,200 rows, OpenMP start-up costs more than it saves
            scores = self.models.gbdt_fast.predict(features, num_threads=1)
        elif reranker == "bi_encoder":
            scores = features[:, self.models.feature_names.index("bi_cosine")]
        elif reranker in ("gbdt", "cross_encoder"):
            if self.models.cross_encoder is None:
                raise InputError(f"reranker {reranker!r} needs the cross-encoder, which this run did not train")
            cross = self.models.cross_scores([normalized[i] for i in repeat], list(self.titles[flat]))
            scores = cross if reranker == "cross_encoder" else self.models.gbdt.predict(np.column_stack([features, cross]))
        else:
            raise InputError(f"unknown reranker {reranker!r}; choose gbdt_fast, gbdt, cross_encoder or bi_encoder")
        scores = np.asarray(scores, np.float64).reshape(n_queries, n_candidates)
        t["rerank"] = time.perf_counter()
        weight = self.config.serve.personalization_weight
        if users is not None and self.personalizer is not None and weight:
            for i, user in enumerate(users):
                if user is None:
                    continue
                personal = np.asarray(self.personalizer(user, list(self.ids[found[i]])), np.float64)
                scores[i] += weight * (personal - personal.mean()) / (personal.std() + 1e-9)
        t["personalize"] = time.perf_counter()
        scores[found < 0] = -np.inf  # the graph found fewer live products than candidates
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        stages = ("features", "rerank", "personalize")
        marks = [t["start"], *(t[s] for s in stages)]
        timings = {**retrieved.timings, **{s: 1e3 * (marks[i + 1] - marks[i]) for i, s in enumerate(stages)}}
        timings["total"] = 1e3 * (time.perf_counter() - retrieved.started)
        results = []
        for i in range(n_queries):
            keep = order[i][found[i][order[i]] >= 0]
            picked = found[i][keep]
            results.append(SearchResult([str(p) for p in self.ids[picked]], [str(t) for t in self.raw_titles[picked]],
                                        scores[i][keep], timings))
        return results
