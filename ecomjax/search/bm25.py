"""BM25 over product titles: the lexical baseline, a re-ranker feature and a candidate source.

Scores follow Lucene's BM25 (the ``bm25s`` default, which ``tests/test_search.py`` checks us
against): ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` times
``tf / (tf + k1 (1 - b + b |d| / avgdl))``. The per-(document, term) weights are computed once
into a sparse matrix, so scoring a query against the whole catalogue is one sparse mat-vec and
scoring given (query, product) pairs is a sparse row-column sum: well under a millisecond for a
query, which is what a re-ranking feature on the serving path can afford.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ecomjax.data.relevance import normalize_text
from ecomjax.errors import InputError

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'/-][a-z0-9]+)*")


def stem(word: str) -> str:
    """Plural folding only (``drills`` -> ``drill``, ``boxes`` -> ``box``), never numbers or
    short words: enough to match how people type queries against catalogue titles without a
    full stemmer's surprises (``gallon`` must not become ``gallo``)."""
    if len(word) <= 3 or word[-1] != "s" or word[-2] in "su" or word[0].isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


def tokenize(text: str) -> list[str]:
    """Normalised, stemmed word tokens (repeats kept: they are term frequencies)."""
    return [stem(w) for w in _TOKEN.findall(normalize_text(text))]


class BM25:
    """A fitted index over ``documents``: ``scores(query)``, ``pair_scores``, ``top_k``."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75):
        if not len(documents):
            raise InputError("BM25 needs at least one document")
        if k1 < 0 or not 0 <= b <= 1:
            raise InputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        tokenized = [tokenize(d) for d in documents]
        self.vocabulary: dict[str, int] = {}
        rows, cols = [], []
        for doc, tokens in enumerate(tokenized):
            for token in tokens:
                cols.append(self.vocabulary.setdefault(token, len(self.vocabulary)))
                rows.append(doc)
        n_docs, n_terms = len(tokenized), max(len(self.vocabulary), 1)
        tf = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_docs, n_terms))
        tf.sum_duplicates()
        lengths = np.array([len(t) for t in tokenized], dtype=np.float32)
        avgdl = max(float(lengths.mean()), 1e-9)
        df = np.bincount(tf.indices, minlength=n_terms).astype(np.float64)
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = k1 * (1 - b + b * lengths / avgdl)  # per document
        tf = tf.tocoo()
        weights = self.idf[tf.col] * tf.data / (tf.data + norm[tf.row])
        # [docs, terms] CSC for pair lookups by term, CSR for whole-catalogue scoring
        self.weights = sp.csr_matrix((weights.astype(np.float32), (tf.row, tf.col)), shape=(n_docs, n_terms))
        self._by_term = self.weights.tocsc()
        self.num_documents = n_docs
        self.avgdl = avgdl
        self._title_terms: dict[str, tuple[dict[str, int], float]] = {}  # text_scores' parse cache

    def _query_vector(self, query: str) -> np.ndarray:
        """Query term ids, each once: "1x1 rail" must not count ``1`` twice (Lucene would)."""
        ids = [self.vocabulary[t] for t in dict.fromkeys(tokenize(query)) if t in self.vocabulary]
        return np.asarray(ids, dtype=np.int64)

    def scores(self, query: str) -> np.ndarray:
        """``[num_documents]`` BM25 score of ``query`` against every document."""
        terms = self._query_vector(query)
        if not len(terms):
            return np.zeros(self.num_documents, dtype=np.float32)
        return np.asarray(self._by_term[:, terms].sum(axis=1)).ravel()

    def pair_scores(self, queries: Sequence[str], documents: np.ndarray) -> np.ndarray:
        """Score of ``queries[i]`` against document index ``documents[i]`` for every ``i``."""
        documents = np.asarray(documents)
        if len(queries) != len(documents):
            raise InputError(f"{len(queries)} queries but {len(documents)} documents")
        out = np.zeros(len(documents), dtype=np.float32)
        for i, (query, doc) in enumerate(zip(queries, documents, strict=True)):
            terms = self._query_vector(query)
            if len(terms):
                out[i] = self.weights[doc, terms].sum()
        return out

    def text_scores(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """Score of ``queries[i]`` against the text ``titles[i]`` with this index's statistics
        (idf, average length), whether or not the title is one of its documents: for a document
        of the index it equals ``pair_scores``. Re-ranking features use this, so a judged file
        with products outside the catalogue scores the same way as the catalogue."""
        if len(queries) != len(titles):
            raise InputError(f"{len(queries)} queries but {len(titles)} titles")
        out = np.zeros(len(titles), dtype=np.float32)
        query_terms: dict[str, list[tuple[str, float]]] = {}
        for i, (query, title) in enumerate(zip(queries, titles, strict=True)):
            if query not in query_terms:
                query_terms[query] = [(t, float(self.idf[self.vocabulary[t]]))
                                      for t in dict.fromkeys(tokenize(query)) if t in self.vocabulary]
            terms = query_terms[query]
            if not terms:
                continue
            if title not in self._title_terms:
                words = tokenize(title)
                counts: dict[str, int] = {}
                for w in words:
                    counts[w] = counts.get(w, 0) + 1
                self._title_terms[title] = (counts, self.k1 * (1 - self.b + self.b * len(words) / self.avgdl))
            counts, norm = self._title_terms[title]
            out[i] = sum(idf * counts[t] / (counts[t] + norm) for t, idf in terms if t in counts)
        return out

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(documents, scores)`` of the ``k`` best documents, best first."""
        scores = self.scores(query)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]
