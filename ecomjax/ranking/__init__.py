"""Ranking for user satisfaction: the multi-task impression ranker (click / purchase / dwell) and
the multi-behaviour (cart + buy) recommender."""
