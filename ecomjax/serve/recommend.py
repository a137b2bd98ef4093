"""Recommendations from a trained next-item model: histories of original item ids in, the top
``k`` original item ids and their scores out, one history or a batch of them per compiled call.

The input is built exactly as evaluation builds it (``ecomjax.data.pipeline.eval_arrays``): the
last ``max_len`` items right-aligned, positions counted from the end; with ``exclude_history``
every item of the history (not only the window) is ranked out, and the padding id and the
table's padding rows never appear. So a user's top-10 here is the top-10 the evaluation ranked
for the same history.

Serving adds two things. Batches: ``recommend_batch`` pads the batch to a power of two (a
few shapes, compiled once by ``warm``), and the exclusion is a ``[batch, rows]`` mask built on
the host, so no history length is a new shape. Products added after training (``add_items``,
text-fused models only): a new item gets the content vector the model gives every item, its
title's sentence embedding normalised as the catalogue's were (``TextNormalizer``) plus its
known title words, in one of the table's spare rows, and no ID vector, exactly what the model
computes for an item it never saw bought. Its row then scores, and can be clicked in a history,
like any other. A text-fused model's item table (a projection of every title) is computed once
per catalogue change, not per request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecomjax.errors import InputError, NonFiniteError, UnknownKeyError
from ecomjax.models.axes import VOCAB_MULTIPLE, padded_vocab
from ecomjax.serve.batching import padded_rows


@dataclass(frozen=True)
class Recommendations:
    item_ids: np.ndarray  # [k] original item ids, best first
    scores: np.ndarray  # [k] float32 model scores


@dataclass(frozen=True)
class _Catalogue:
    """What one call reads, swapped whole when products are added (a request sees the old
    catalogue or the new one, never half of an update)."""

    graphdef: nnx.GraphDef  # changes only when the table grows
    compiled: _Compiled
    state: nnx.State
    rows: int  # rows of the item table (catalogue items, spare rows, padding)
    table: jax.Array | None  # precomputed item table of a text-fused model (None: the ID table)
    item_ids: np.ndarray  # dense id -> original id, entry 0 padding (object dtype once "sku-1" joins numbers)
    index: dict[str, int]  # str(original id) -> dense id

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1


def _hidden_scores(graphdef, state, table, items, positions, segments):
    model = nnx.merge(graphdef, state)
    hidden = model.encode(items, positions, segments, deterministic=True)[:, -1]
    if table is None:
        return model.catalogue_scores(hidden)
    return jnp.einsum("bd,nd->bn", hidden, table.astype(hidden.dtype), preferred_element_type=jnp.float32)


def _masked_scores(graphdef, state, table, items, positions, segments, excluded):
    return jnp.where(excluded, -jnp.inf, _hidden_scores(graphdef, state, table, items, positions, segments))


@dataclass(frozen=True)
class _Compiled:
    """The jitted calls of one model graph. The graph is closed over, not a static argument:
    hashing a module graph on every call costs about a millisecond."""

    scores: Any
    top_k: Any
    table: Any

    @classmethod
    def of(cls, graphdef: nnx.GraphDef) -> _Compiled:
        return cls(jax.jit(partial(_masked_scores, graphdef)),
                   jax.jit(lambda *a, k: jax.lax.top_k(_masked_scores(graphdef, *a), k), static_argnames="k"),
                   jax.jit(lambda state: nnx.merge(graphdef, state).item_table()))


K_BUCKETS = (10, 100)  # top-k widths compiled; a wider one costs more (1.6 vs 0.6 ms at 32 x 12k items)


def _width(k: int, num_items: int) -> int:
    """The compiled top-k width that serves ``k`` (the results are cut to ``k``)."""
    return min(next((b for b in K_BUCKETS if b >= k), k), num_items)


class NewItemContent:
    """Content features for titles added after training: the run's sentence encoder, the
    normalisation fitted on its catalogue, its title-word vocabulary (``vocab.npz``)."""

    def __init__(self, encoder: str, normalizer, vocabulary: Sequence[str], words_width: int | None):
        self.checkpoint, self._encoder = encoder, None  # loaded on the first new product
        self.normalizer = normalizer
        self.word_index = {w: i + 1 for i, w in enumerate(vocabulary) if not w.startswith("attr:")}
        self.words_width = words_width

    def __call__(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        from ecomjax.data.item_text import MAX_TITLE_WORDS, title_words

        if self._encoder is None:
            from ecomjax.encoders.text import TextEncoder
            from ecomjax.encoders.weights import resolve_checkpoint

            self._encoder = TextEncoder.from_pretrained(resolve_checkpoint(self.checkpoint))
        features = self.normalizer(self._encoder.encode(list(titles), batch_size=64))
        if self.words_width is None:
            return features, None
        words = np.zeros((len(titles), self.words_width), np.int32)
        for row, title in enumerate(titles):
            known = [self.word_index[w] for w in title_words(title) if w in self.word_index][:MAX_TITLE_WORDS]
            words[row, :len(known)] = known
        return features, words


class Recommender:
    """``recommend(history, k, exclude_history)`` over a sequential model's whole catalogue;
    ``recommend_batch`` for many histories in one call; ``add_items`` for new products."""

    def __init__(self, model: nnx.Module, item_ids: np.ndarray, max_len: int,
                 content: NewItemContent | None = None):
        model = nnx.merge(*nnx.split(model), copy=True)  # own Variables: the caller's model is not touched
        embedding = model.item_embedding
        self.fusion = embedding.fusion
        self.max_len = max_len
        self.content = content
        if self.fusion != "id":
            # every row is a catalogue row to the model: serving masks the rows not in use, so
            # a product added later gets its popularity-bucket vector like any cold item
            embedding.num_items = self._rows(model) - 1
        graphdef, state = nnx.split(model)
        self._catalogue = self._with_table(graphdef, state, self._rows(model), np.asarray(item_ids).tolist())
        self._update = threading.Lock()  # one catalogue change at a time; reads never wait

    @staticmethod
    def _rows(model: nnx.Module) -> int:
        embedding = model.item_embedding
        if embedding.features is not None:
            return int(embedding.features.shape[0])
        return padded_vocab(embedding.num_items + 1)  # an ID table (float or int8) of the trained items

    def _with_table(self, graphdef: nnx.GraphDef, state: nnx.State, rows: int, ids: list,
                    compiled: _Compiled | None = None) -> _Catalogue:
        compiled = compiled or _Compiled.of(graphdef)
        table = None if self.fusion == "id" else compiled.table(state)
        index = {str(item): dense for dense, item in enumerate(ids) if dense > 0}
        array = np.asarray(ids)
        if array.dtype.kind == "U" and not all(isinstance(i, str) for i in ids):
            array = np.array(ids, dtype=object)  # numbers stay numbers beside an added "sku-1"
        return _Catalogue(graphdef, compiled, state, rows, table, array, index)

    @property
    def item_ids(self) -> np.ndarray:
        return self._catalogue.item_ids

    @property
    def num_items(self) -> int:
        return self._catalogue.num_items

    @property
    def index(self) -> dict[str, int]:
        return self._catalogue.index

    def knows(self, item) -> bool:
        return str(item) in self._catalogue.index

    def dense_ids(self, history: Sequence, catalogue: _Catalogue | None = None) -> np.ndarray:
        """Original ids -> dense ids; an unknown id is an error naming it."""
        index = (catalogue or self._catalogue).index
        unknown = [h for h in history if str(h) not in index]
        if unknown:
            raise UnknownKeyError(f"items unknown to the recommender: {unknown[:5]} (it knows {len(index)} items)")
        return np.asarray([index[str(h)] for h in history], np.int32)

    def recommend(self, history: Sequence, k: int = 10, exclude_history: bool = True) -> Recommendations:
        """The ``k`` best items after ``history`` (original ids, oldest first)."""
        result = self.recommend_batch([history], k, exclude_history)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_batch(self, histories: Sequence[Sequence], k: int = 10, exclude_history: bool | Sequence[bool] = True,
                        *, rows: int | None = None) -> list[Recommendations | Exception]:
        """The ``k`` best items after each history, in one call padded to ``rows`` (default: the
        next power of two). A history that cannot be ranked (empty, unknown ids, non-finite
        scores) is an exception in its place; the others are answered."""
        catalogue = self._catalogue
        if not 1 <= k <= catalogue.num_items:
            raise InputError(f"k={k} must be in [1, {catalogue.num_items}]")
        excludes = [exclude_history] * len(histories) if isinstance(exclude_history, bool) else list(exclude_history)
        results: list[Recommendations | Exception | None] = [None] * len(histories)
        dense = []
        for i, history in enumerate(histories):
            try:
                if len(history) == 0:
                    raise InputError("empty history: a sequential recommender needs at least one item")
                dense.append((i, self.dense_ids(history, catalogue)))
            except (InputError, UnknownKeyError) as error:
                results[i] = error
        if dense:
            inputs = self._inputs([d for _, d in dense], [excludes[i] for i, _ in dense], catalogue,
                                  rows or padded_rows(len(dense)))
            scores, top = catalogue.compiled.top_k(catalogue.state, catalogue.table, *inputs,
                                                   k=_width(k, catalogue.num_items))
            scores, top = np.asarray(scores)[:, :k], np.asarray(top)[:, :k]
            ids = catalogue.item_ids
            for row, (i, _) in enumerate(dense):
                if np.isnan(scores[row]).any() or np.isposinf(scores[row]).any():  # top_k ranks NaN first
                    results[i] = NonFiniteError(
                        "the model scores this history NaN or infinite: its parameters are not finite "
                        "(a corrupt checkpoint, or training that diverged); no recommendations")
                else:
                    results[i] = Recommendations(ids[top[row]], scores[row])
        return results

    def scores(self, history: Sequence) -> np.ndarray:
        """``[num_items + 1]`` next-item scores by dense id (index 0 -inf), history not excluded."""
        if len(history) == 0:
            raise InputError("empty history: a sequential recommender needs at least one item")
        catalogue = self._catalogue
        inputs = self._inputs([self.dense_ids(history, catalogue)], [False], catalogue, 1)
        scores = catalogue.compiled.scores(catalogue.state, catalogue.table, *inputs)
        return np.asarray(scores)[0, : catalogue.num_items + 1]

    def warm(self, max_rows: int, k: int) -> None:
        """Compile every padded batch shape up to ``max_rows`` and top-k width up to ``k`` now,
        so no request pays it."""
        self._catalogue_warm(self._catalogue, max_rows, k)

    def _inputs(self, dense: list[np.ndarray], exclude: list[bool], catalogue: _Catalogue,
                rows: int) -> tuple[jax.Array, ...]:
        """(items, positions, segments, excluded) as evaluation builds them; padding rows repeat
        the first history (a row of padding alone would attend to nothing)."""
        if rows < len(dense):
            raise InputError(f"{len(dense)} histories do not fit a batch of {rows}")
        table_rows = catalogue.rows
        items = np.zeros((rows, self.max_len), np.int32)
        excluded = np.zeros((rows, table_rows), bool)
        excluded[:, 0] = True
        excluded[:, catalogue.num_items + 1:] = True  # table padding and unused spare rows
        for row in range(rows):
            history = dense[row] if row < len(dense) else dense[0]
            window = history[-self.max_len:]
            items[row, self.max_len - len(window):] = window
            if row < len(dense) and exclude[row]:
                excluded[row, history] = True
        segments = (items > 0).astype(np.int32)
        positions = (self.max_len - 1 - np.arange(self.max_len))[None, :].astype(np.int32) * segments
        return tuple(jnp.asarray(a) for a in (items, positions, segments, excluded))

    # --- products added after training -----------------------------------------------------------

    def add_items(self, item_ids: Sequence, titles: Sequence[str], *, warm_rows: int = 0, warm_k: int = 10) -> list[int]:
        """Give ``item_ids`` the content vectors of ``titles`` (new ids take spare table rows,
        known ids keep their ID vector and get the new title, the last one if named twice); returns
        the dense ids of the distinct ids. The
        catalogue is swapped in whole once every vector is computed. ``warm_rows`` compiles
        the batch shapes again when the table had to grow (before the swap)."""
        if self.content is None:
            raise InputError("this recommender has no content vectors (item_fusion 'id', or a run trained "
                             "before vocab.npz kept the title normalisation): new products cannot be "
                             "recommended until it is retrained with them")
        if len(item_ids) != len(titles):
            raise InputError(f"{len(item_ids)} item ids but {len(titles)} titles")
        last = list({str(item): n for n, item in enumerate(item_ids)}.values())  # an id named twice: its last title
        features, words = self.content([titles[n] for n in last])
        item_ids = [item_ids[n] for n in last]
        with self._update:
            old = self._catalogue
            ids, index = old.item_ids.tolist(), dict(old.index)
            dense = []
            for item in item_ids:
                if str(item) not in index:
                    index[str(item)] = len(ids)
                    ids.append(item)
                dense.append(index[str(item)])
            model = nnx.merge(old.graphdef, old.state, copy=True)  # requests keep reading ``old``
            grown = len(ids) > self._rows(model)
            if grown:
                self._grow(model, len(ids))
            embedding, rows = model.item_embedding, np.asarray(dense)
            embedding.features[...] = embedding.features[...].at[rows].set(jnp.asarray(features))
            if words is not None:
                embedding.words[...] = embedding.words[...].at[rows].set(jnp.asarray(words))
            graphdef, state = nnx.split(model)
            catalogue = self._with_table(graphdef, state, self._rows(model), ids,
                                         None if grown else old.compiled)
            if grown and warm_rows:
                self._catalogue_warm(catalogue, warm_rows, warm_k)
            self._catalogue = catalogue
        return dense

    def _grow(self, model: nnx.Module, needed: int) -> None:
        """Pad every per-item array of the model to hold ``needed`` ids (a multiple of 1,024
        rows more, so growing is rare: each growth compiles the serving shapes again)."""
        embedding = model.item_embedding
        old = self._rows(model)
        new = -(-max(needed, old + 1024) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        for variable in (embedding.ids.embedding if embedding.ids is not None else None, embedding.features,
                         embedding.words, embedding.counts):
            if variable is None:
                continue
            value = variable[...]
            variable[...] = jnp.concatenate([value, jnp.zeros((new - old, *value.shape[1:]), value.dtype)])
        embedding.num_items = new - 1
        if embedding.ids is not None:
            embedding.ids.num_embeddings = new

    def _catalogue_warm(self, catalogue: _Catalogue, max_rows: int, k: int) -> None:
        rows = 1
        while rows <= max_rows:
            inputs = self._inputs([np.asarray([1], np.int32)], [True], catalogue, rows)
            for width in {_width(j, catalogue.num_items) for j in range(1, min(k, catalogue.num_items) + 1)}:
                jax.block_until_ready(catalogue.compiled.top_k(catalogue.state, catalogue.table, *inputs, k=width))
            rows *= 2
