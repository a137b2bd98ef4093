"""Product search's non-neural parts: BM25, lexical features, the product prior, and the
``SearchModels`` bundle the re-rankers score pairs with. The relevance task that trains them is
``ecomjax.tasks.relevance``; serving (the ANN index and ``SearchPipeline``) is ``ecomjax.serve``.
"""
