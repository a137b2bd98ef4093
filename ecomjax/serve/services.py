"""What each served run answers, as batch handlers: ``/search`` (a relevance run's
``SearchPipeline``), ``/recommend`` (a next-item run's ``Recommender`` and the session store),
``/rank`` (a satisfaction ranker's ``RankerScorer``).

``steps`` are a service's batch stages (``ecomjax.serve.batching``): the first takes the
validated requests of one batch, the last returns one result or exception each; search has
two (encoder and graph, then features and re-ranker), the others one.
Checks that concern one request (an unknown id, an empty query, a field outside its
vocabulary) happen before batching, in ``check``, so one bad request never fails its batch's
neighbours. ``warm`` compiles every padded shape before the service reports healthy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecomjax.errors import InputError, UnknownKeyError
from ecomjax.serve import schemas
from ecomjax.serve.batching import padded_rows


class SearchService:
    endpoint = "search"

    def __init__(self, run, max_batch: int, max_query_pieces: int = 32):
        self.run, self.pipeline = run, run.inference
        self.max_batch, self.max_query_pieces = max_batch, max_query_pieces
        self.candidates = self.pipeline.config.serve.candidates

    @property
    def size(self) -> int:
        return int(self.pipeline.alive.sum())

    def warm(self) -> None:
        self.pipeline.warm(self.max_batch, self.max_query_pieces)

    def check(self, request: schemas.SearchRequest) -> None:
        if request.k > self.candidates:
            raise InputError(f"k: {request.k} is more than the {self.candidates} candidates this run re-ranks")
        pieces = self.pipeline.query_pieces(request.query)
        if pieces <= 2:
            raise InputError(f"query: {request.query!r} is empty after normalisation")
        if pieces > self.max_query_pieces:
            raise InputError(f"query: {pieces} word pieces; the service encodes at most {self.max_query_pieces}")

    def retrieve(self, requests: Sequence[schemas.SearchRequest]) -> tuple:
        """First stage: encoder and graph for the whole batch."""
        return requests, self.pipeline.retrieve([r.query for r in requests], rows=self.max_batch)

    def rank(self, retrieved: tuple) -> list[Any]:
        """Second stage: one re-ranking per re-ranker named in the batch (almost always one)."""
        requests, found = retrieved
        results: list[Any] = [None] * len(requests)
        by_reranker: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            by_reranker.setdefault(r.reranker, []).append(i)
        for reranker, rows in by_reranker.items():
            batch = [requests[i] for i in rows]
            users = [r.history for r in batch] if any(r.history for r in batch) else None
            part = found if len(rows) == len(requests) else found.subset(rows)
            try:
                hits = self.pipeline.rank(part, users, max(r.k for r in batch), reranker=reranker)
            except (InputError, UnknownKeyError) as error:
                hits = [error] * len(batch)
            for i, r, hit in zip(rows, batch, hits, strict=True):
                results[i] = hit if isinstance(hit, Exception) else (hit, r.k)
        return results

    @property
    def steps(self) -> list:
        return [self.retrieve, self.rank]

    def add(self, items: Sequence[schemas.NewItem]) -> int:
        self.pipeline.add_products([str(i.item_id) for i in items], [i.title for i in items])
        return len(items)


@dataclass
class SessionStore:
    """Recent items per session (``POST /events``), what ``/recommend`` reads for a session id."""

    max_items: int = schemas.MAX_HISTORY

    def __post_init__(self):
        self.sessions: dict[str, deque] = {}

    def add(self, session: str, item) -> int:
        items = self.sessions.setdefault(session, deque(maxlen=self.max_items))
        items.append(item)
        return len(items)

    def items(self, session: str) -> list:
        return list(self.sessions.get(session, ()))


class RecommendService:
    endpoint = "recommend"

    def __init__(self, run, max_batch: int):
        self.run, self.recommender = run, run.inference
        self.max_batch = max_batch
        self.k = min(schemas.MAX_K, self.recommender.num_items)
        self.sessions = SessionStore()

    @property
    def size(self) -> int:
        return self.recommender.num_items

    def warm(self) -> None:
        self.recommender.warm(self.max_batch, self.k)

    def history(self, request: schemas.RecommendRequest) -> list:
        """The request's history then its session's events (oldest first); unknown ids named."""
        history = list(request.history)
        if request.session_id is not None:
            session = self.sessions.items(request.session_id)
            if not session and not history:
                raise UnknownKeyError(f"session_id: {request.session_id!r} has no events; post some to "
                                      "/events or send a history")
            history += session
        self.check_known("history", request.history)
        return history[-schemas.MAX_HISTORY:]

    @property
    def steps(self) -> list:
        return [self.handle]

    def check_known(self, field: str, ids: Sequence) -> None:
        unknown = [i for i in ids if not self.recommender.knows(i)]
        if unknown:
            raise UnknownKeyError(f"{field}: item ids unknown to the recommender: {unknown[:5]}")

    def handle(self, requests: Sequence[tuple[list, int, bool]]) -> list[Any]:
        results = self.recommender.recommend_batch([h for h, _, _ in requests], self.k, [e for _, _, e in requests])
        return [r if isinstance(r, Exception) else (r, k) for r, (_, k, _) in zip(results, requests, strict=True)]

    def can_add(self) -> str | None:
        if self.recommender.content is None:
            return (f"{self.run.workdir}: an ID-only recommender (item_fusion {self.recommender.fusion!r}) cannot "
                    "recommend products it was not trained on")
        return None

    def add(self, items: Sequence[schemas.NewItem]) -> int:
        self.recommender.add_items([_native(i.item_id, self.recommender) for i in items], [i.title for i in items],
                                   warm_rows=self.max_batch, warm_k=self.k)
        return len(items)


def _native(item, recommender):
    """A new id in the type of the run's ids (numbers stay numbers when the run's are numbers)."""
    ids = recommender.item_ids
    if np.issubdtype(ids.dtype, np.integer) and isinstance(item, str) and item.isdigit():
        return int(item)
    return item


class RankService:
    endpoint = "rank"
    max_rows = 1024
    size = 0  # no catalogue of its own: candidates come with their features

    def __init__(self, run, max_batch: int):
        self.run, self.scorer = run, run.inference
        self.max_batch = max_batch
        s = self.scorer.schema
        self.categorical = {f.name: (i, f.vocab_size) for i, f in enumerate(s.categorical)}
        self.numeric = {name: i for i, name in enumerate(s.numeric)}
        self.sequences = {f.name: (i, f.vocab_size, f.max_len) for i, f in enumerate(s.sequences)}
        self.max_len = max((f.max_len for f in s.sequences), default=1)

    def warm(self) -> None:
        rows = 1
        while rows <= self.max_rows:
            self._score(self._arrays([schemas.Candidate(numeric=dict.fromkeys(self.numeric, 0.0))] * rows))
            rows *= 2

    def features(self, request: schemas.RankRequest) -> dict[str, np.ndarray]:
        """The candidates as the ranker's arrays; an unknown field or an id outside its
        vocabulary is an error naming the candidate and the field."""
        for n, c in enumerate(request.candidates):
            where = f"candidates[{n}]"
            for name, value in c.categorical.items():
                if name not in self.categorical:
                    raise InputError(f"{where}.categorical.{name}: not a field of this ranker "
                                     f"(fields: {sorted(self.categorical)})")
                if not 0 <= value < self.categorical[name][1]:
                    raise InputError(f"{where}.categorical.{name}: id {value} outside [0, "
                                     f"{self.categorical[name][1]}) (0 = unknown)")
            missing = sorted(set(self.numeric) - set(c.numeric))
            extra = sorted(set(c.numeric) - set(self.numeric))
            if missing or extra:
                raise InputError(f"{where}.numeric: missing {missing}, unknown {extra} (fields: {sorted(self.numeric)})")
            if not all(np.isfinite(v) for v in c.numeric.values()):
                raise InputError(f"{where}.numeric: values must be finite")
            for name, ids in c.sequences.items():
                if name not in self.sequences:
                    raise InputError(f"{where}.sequences.{name}: not a sequence field of this ranker "
                                     f"(fields: {sorted(self.sequences)})")
                _, vocab, max_len = self.sequences[name]
                if len(ids) > max_len or any(not 0 <= i < vocab for i in ids):
                    raise InputError(f"{where}.sequences.{name}: at most {max_len} ids in [0, {vocab})")
        return self._arrays(request.candidates)

    def _arrays(self, candidates: Sequence[schemas.Candidate]) -> dict[str, np.ndarray]:
        n = len(candidates)
        categorical = np.zeros((n, len(self.categorical)), np.int32)
        numeric = np.zeros((n, len(self.numeric)), np.float32)
        sequences = np.zeros((n, len(self.sequences), self.max_len), np.int32)
        for row, c in enumerate(candidates):
            for name, value in c.categorical.items():
                categorical[row, self.categorical[name][0]] = value
            for name, value in c.numeric.items():
                numeric[row, self.numeric[name]] = value
            for name, ids in c.sequences.items():
                sequences[row, self.sequences[name][0], :len(ids)] = ids
        return {"categorical": categorical, "numeric": numeric, "sequences": sequences}

    def _score(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(features["categorical"])
        rows = padded_rows(n)
        padded = {k: np.concatenate([v, np.repeat(v[:1], rows - n, axis=0)]) for k, v in features.items()}
        return {k: v[:n] for k, v in self.scorer.score(padded).items()}

    @property
    def steps(self) -> list:
        return [self.handle]

    def handle(self, requests: Sequence[dict[str, np.ndarray]]) -> list[Any]:
        """All requests' candidates scored together, in chunks of at most ``max_rows``."""
        sizes = [len(r["categorical"]) for r in requests]
        merged = {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}
        total = sum(sizes)
        parts = [self._score({k: v[s:s + self.max_rows] for k, v in merged.items()})
                 for s in range(0, total, self.max_rows)]
        scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out, start = [], 0
        for size in sizes:
            out.append({k: v[start:start + size] for k, v in scores.items()})
            start += size
        return out
