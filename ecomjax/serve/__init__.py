"""Serving: approximate nearest-neighbour search and the online search pipeline."""

from ecomjax.serve.ann import HNSWIndex, exact_top_k, recall_at_k
from ecomjax.serve.personalize import HistoryPersonalizer
from ecomjax.serve.search import SearchPipeline, SearchResult

__all__ = ["HNSWIndex", "HistoryPersonalizer", "SearchPipeline", "SearchResult", "exact_top_k", "recall_at_k"]
