"""Flax NNX models. A model knows nothing about tasks: it maps inputs to representations.

Every module lives here (sequential recommenders, BERT, EfficientNet, fusion heads, towers, the
satisfaction ranker, the multi-behaviour recommender); parameters carry logical axis names
(``ecomjax.models.axes``) so any mesh can place them.
"""
