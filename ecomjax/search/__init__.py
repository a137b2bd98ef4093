"""Product search: relevance data, lexical and neural relevance models, re-rankers, training.

Serving (the ANN index and ``SearchPipeline``) lives in ``ecomjax.serve``.
"""
