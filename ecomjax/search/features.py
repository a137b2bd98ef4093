"""Cheap (query, product) features for the gradient-boosted re-ranker.

Everything here costs microseconds per pair, so the same function serves training (50k pairs)
and the serving path (100 candidates per query inside a 30 ms budget). The features are the
ones Home Depot relevance work found to matter: how much of the query the title covers (the
*last* query word is usually the product type: "cordless drill"), whether the numbers agree
(sizes and gauges), character n-gram overlap for misspellings ("drils"), BM25, lengths. Model
scores (encoder cosines, a cross-encoder) and the product prior are appended by the caller.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

from ecomjax.errors import InputError
from ecomjax.search.bm25 import tokenize

LEXICAL_FEATURES = (
    "query_words", "title_words", "matched_words", "matched_fraction", "all_matched",
    "last_word_matched", "first_word_matched", "matched_bigrams", "number_words", "numbers_matched",
    "char3_jaccard", "char3_query_coverage", "query_chars",
)
_NUMBER = re.compile(r"\d")


def _char_ngrams(text: str, n: int = 3) -> set[str]:
    padded = f" {text} "
    return {padded[i:i + n] for i in range(len(padded) - n + 1)}


def lexical_features(queries: Sequence[str], titles: Sequence[str], cache: dict | None = None) -> np.ndarray:
    """``[len(queries), len(LEXICAL_FEATURES)]`` float32, one row per (query, title) pair.

    ``cache`` (text -> parsed words and n-grams) may persist across calls: serving keeps the
    whole catalogue's titles parsed, so a request parses only its query.
    """
    if len(queries) != len(titles):
        raise InputError(f"{len(queries)} queries but {len(titles)} titles")
    cache = {} if cache is None else cache

    def parsed(text: str) -> tuple:
        entry = cache.get(text)
        if entry is None:  # what every pair re-reads: words, char 3-grams, word set, bigram set,
            words = tokenize(text)  # bigrams in order, the words with a digit
            bigrams = list(itertools.pairwise(words))
            entry = cache[text] = (words, _char_ngrams(" ".join(words)), set(words), set(bigrams), bigrams,
                                   [w for w in words if _NUMBER.search(w)])
        return entry

    rows = []
    for query, title in zip(queries, titles, strict=True):
        q_words, q_grams, _, _, q_bigrams, numbers = parsed(query)
        t_words, t_grams, t_set, t_bigrams, _, _ = parsed(title)
        matched = [w in t_set for w in q_words]
        n_matched = sum(matched)
        shared = len(q_grams & t_grams)
        union = len(q_grams) + len(t_grams) - shared
        rows.append((
            len(q_words), len(t_words), n_matched, n_matched / max(len(q_words), 1),
            float(all(matched) and bool(matched)), float(bool(matched) and matched[-1]),
            float(bool(matched) and matched[0]), sum(b in t_bigrams for b in q_bigrams),
            len(numbers), sum(w in t_set for w in numbers), shared / max(union, 1), shared / max(len(q_grams), 1),
            len(query),
        ))
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(LEXICAL_FEATURES))


class ProductPrior:
    """Mean training relevance of a product (and how many judgements it rests on).

    Products recur across queries, and some are simply judged relevant more often (a good
    title, a popular item). For a training row the prior leaves that row's own grade out, so
    the re-ranker never learns from a feature that contains its label; an unseen product gets
    the global mean and a count of zero.
    """

    def __init__(self, product_ids: np.ndarray, relevance: np.ndarray, smoothing: float = 2.0):
        self.mean = float(np.mean(relevance))
        self.smoothing = smoothing
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        for product, grade in zip(product_ids, relevance, strict=True):
            self.sums[product] = self.sums.get(product, 0.0) + float(grade)
            self.counts[product] = self.counts.get(product, 0) + 1

    def to_dict(self) -> dict:
        return {"mean": self.mean, "smoothing": self.smoothing, "sums": self.sums, "counts": self.counts}

    @classmethod
    def from_dict(cls, saved: dict) -> ProductPrior:
        prior = cls.__new__(cls)
        prior.mean, prior.smoothing = float(saved["mean"]), float(saved["smoothing"])
        prior.sums = {k: float(v) for k, v in saved["sums"].items()}
        prior.counts = {k: int(v) for k, v in saved["counts"].items()}
        return prior

    def _value(self, total: float, count: int) -> float:
        if count + self.smoothing <= 0:
            return self.mean  # unseen product, no smoothing: the global mean
        return (total + self.smoothing * self.mean) / (count + self.smoothing)

    def features(self, product_ids: Sequence[str]) -> np.ndarray:
        """``[n, 2]``: smoothed mean grade, number of judgements."""
        return np.array([(self._value(self.sums.get(p, 0.0), self.counts.get(p, 0)), self.counts.get(p, 0))
                         for p in product_ids], dtype=np.float32).reshape(-1, 2)

    def leave_one_out(self, product_ids: Sequence[str], relevance: np.ndarray) -> np.ndarray:
        """``features`` for the rows the prior was built from, each without its own grade."""
        rows = []
        for product, grade in zip(product_ids, relevance, strict=True):
            count = self.counts[product] - 1
            rows.append((self._value(self.sums[product] - float(grade), count), count))
        return np.array(rows, dtype=np.float32).reshape(-1, 2)


PRIOR_FEATURES = ("product_prior", "product_judgements")
