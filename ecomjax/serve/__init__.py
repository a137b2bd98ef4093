"""Serving: approximate nearest-neighbour search, the online search pipeline, ranker scoring."""

from ecomjax.serve.ann import HNSWIndex, exact_top_k, recall_at_k
from ecomjax.serve.personalize import HistoryPersonalizer
from ecomjax.serve.ranker import RankerScorer
from ecomjax.serve.search import SearchPipeline, SearchResult

__all__ = ["HNSWIndex", "HistoryPersonalizer", "RankerScorer", "SearchPipeline", "SearchResult", "exact_top_k", "recall_at_k"]
