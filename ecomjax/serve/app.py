"""The HTTP service (FastAPI on uvicorn): trained runs behind ``/search``, ``/recommend``,
``/rank``, live catalogue and session updates behind ``/items`` and ``/events``, and
``/healthz`` and ``/metrics`` for whoever runs it.

Every request is validated (``schemas``) and checked against the runs (unknown ids, fields
outside a vocabulary) before it joins a batch; whatever is wrong with it is a 4xx whose
``error`` names the field or id. A 5xx is a bug. Write endpoints need the bearer token when the
service has one. Each request is one JSON access-log line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ecomjax.errors import InputError, UnknownKeyError, one_line
from ecomjax.serve import schemas
from ecomjax.serve.batching import Batcher
from ecomjax.serve.journal import Journal
from ecomjax.serve.metrics import ServiceMetrics
from ecomjax.serve.services import RankService, RecommendService, SearchService

access_log = logging.getLogger("ecomjax.access")


@dataclass(frozen=True)
class ServeOptions:
    max_batch: int = 32
    window_ms: float = 2.0
    timeout_s: float = 10.0  # a request not answered by then is a 503
    token: str | None = None  # bearer token for /items and /events
    state_dir: Path | None = None  # serving state (default: the first run's WORKDIR/serving)


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Service:
    """The runs being served and their batchers; ``app`` is the ASGI application."""

    def __init__(self, runs: list, options: ServeOptions):
        self.options = options
        self.metrics = ServiceMetrics()
        self.search: SearchService | None = None
        self.recommend: RecommendService | None = None
        self.rank: RankService | None = None
        for run in runs:
            self._attach(run)
        if not (self.search or self.recommend or self.rank):
            raise InputError("nothing to serve: give a relevance, next_item or ranker run")
        if self.search is not None:
            import faiss

            # a request batch searches a few queries: OpenMP's threads then spin far longer than
            # they work (measured: 18 ms of CPU per 8-query batch for 1 ms of search), CPU the
            # event loop and the feature code need
            faiss.omp_set_num_threads(1)
        if self.search and self.recommend:
            from ecomjax.serve.personalize import HistoryPersonalizer

            self.search.pipeline.personalizer = HistoryPersonalizer.from_recommender(self.recommend.recommender)
        state = options.state_dir or Path(runs[0].workdir) / "serving"
        self.journal = Journal(Path(state) / "journal.jsonl")
        self.batchers: dict[str, Batcher] = {}
        self.executors: dict[str, list[ThreadPoolExecutor]] = {}  # endpoint -> one thread per stage
        for service in self.services:
            executors = [ThreadPoolExecutor(1, thread_name_prefix=f"{service.endpoint}-{n}")
                         for n in range(len(service.steps))]
            self.executors[service.endpoint] = executors
            self.batchers[service.endpoint] = Batcher(service.endpoint, list(zip(service.steps, executors, strict=True)),
                                                      max_batch=options.max_batch, window_ms=options.window_ms,
                                                      observe=self.metrics.observe_batch)
        self.ready = False
        self.app = self._build()

    def _attach(self, run) -> None:
        task = run.config.task
        kinds = {"relevance": ("search", SearchService), "next_item": ("recommend", RecommendService),
                 "ranker": ("rank", RankService)}
        if task not in kinds:
            raise InputError(f"{run.workdir}: a {task} run has no endpoint; serve relevance, next_item or ranker runs")
        name, cls = kinds[task]
        if getattr(self, name) is not None:
            raise InputError(f"{run.workdir}: two {task} runs given; /{name} serves one")
        setattr(self, name, cls(run, self.options.max_batch))

    @property
    def services(self) -> list:
        return [s for s in (self.search, self.recommend, self.rank) if s is not None]

    def prepare(self) -> None:
        """Replay the serving state, then compile every batch shape (before ``/healthz`` is ok)."""
        items = [schemas.NewItem(**i) for r in self.journal.records if r["kind"] == "items" for i in r["body"]]
        if items:
            for service in self.item_targets():
                service.add(items)
        for record in self.journal.records:
            if record["kind"] == "events" and self.recommend is not None:
                for event in record["body"]:
                    self.recommend.sessions.add(event["session_id"], event["item_id"])
        for service in self.services:
            service.warm()
            self.metrics.catalogue.labels(service.endpoint).set(service.size)
        self.ready = True

    def item_targets(self) -> list:
        """The served runs that take new products (search; a text-fused recommender)."""
        targets = [self.search] if self.search is not None else []
        if self.recommend is not None and self.recommend.can_add() is None:
            targets.append(self.recommend)
        return targets

    # --- the application ---------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):
            for batcher in self.batchers.values():
                batcher.start()
            try:
                yield
            finally:  # uvicorn has let in-flight requests finish; answer what is queued
                for batcher in self.batchers.values():
                    await batcher.stop()
                for executors in self.executors.values():
                    for executor in executors:
                        executor.shutdown(wait=True)
                self.journal.close()

        app = FastAPI(title="ecomjax", lifespan=lifespan, docs_url=None, redoc_url=None)
        self._routes(app)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, error: RequestValidationError):
            problems = []
            for e in error.errors():
                where = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
                problems.append(f"{where}: {e['msg']}")
            return JSONResponse({"error": "; ".join(problems[:5])}, status_code=422)

        @app.exception_handler(ClientError)
        async def client_error(request: Request, error: ClientError):
            return JSONResponse({"error": str(error)}, status_code=error.status)

        @app.exception_handler(Exception)
        async def defect(request: Request, error: Exception):
            access_log.error("unhandled error on %s: %r", request.url.path, error, exc_info=error)
            return JSONResponse({"error": "internal error (logged by the service)"}, status_code=500)

        app.add_middleware(_AccessLog, metrics=self.metrics)
        return app

    async def _submit(self, endpoint: str, payload: Any) -> Any:
        try:
            return await asyncio.wait_for(self.batchers[endpoint].submit(payload), self.options.timeout_s)
        except TimeoutError:
            raise ClientError(503, f"/{endpoint}: not answered within {self.options.timeout_s} s") from None
        except (InputError, UnknownKeyError) as error:
            raise ClientError(422, one_line(error)) from None

    def _need(self, service, endpoint: str, task: str):
        if service is None:
            raise ClientError(404, f"/{endpoint}: no {task} run is served")
        return service

    def _check(self, call, *args):
        try:
            return call(*args)
        except (InputError, UnknownKeyError) as error:
            raise ClientError(422, one_line(error)) from None

    def _authorized(self, request: Request) -> None:
        token = self.options.token
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
            raise ClientError(401, "this endpoint needs 'Authorization: Bearer <token>' (the service's --token-file)")

    def _routes(self, app: FastAPI) -> None:
        service = self

        @app.get("/healthz")
        async def healthz():
            body = {"ready": service.ready, "endpoints": [s.endpoint for s in service.services],
                    "catalogue": {s.endpoint: s.size for s in service.services if s.size}}
            return JSONResponse(body, status_code=200 if service.ready else 503)

        @app.get("/metrics")
        async def metrics():
            if service.recommend is not None:
                service.metrics.sessions.set(len(service.recommend.sessions.sessions))
            return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

        @app.post("/search", response_model=schemas.SearchResponse)
        async def search(body: schemas.SearchRequest):
            s = service._need(service.search, "search", "relevance")
            service._check(s.check, body)
            if body.history:  # personalised by the served recommender
                r = service._need(service.recommend, "search", "next_item (to read a history)")
                service._check(r.check_known, "history", body.history)
            found, k = await service._submit("search", body)
            for stage, ms in found.timings_ms.items():
                if stage != "total":
                    service.metrics.stages.labels("search", stage).observe(ms / 1e3)
            hits = [{"product_id": p, "title": t, "score": float(x)}
                    for p, t, x in zip(found.product_ids[:k], found.titles[:k], found.scores[:k], strict=True)]
            return JSONResponse({"results": hits, "timings_ms": found.timings_ms})

        @app.post("/recommend", response_model=schemas.RecommendResponse)
        async def recommend(body: schemas.RecommendRequest):
            s = service._need(service.recommend, "recommend", "next_item")
            history = service._check(s.history, body)
            found, k = await service._submit("recommend", (history, body.k, body.exclude_history))
            items = [{"item_id": _json_id(i), "score": float(x)}
                     for i, x in zip(found.item_ids[:k], found.scores[:k], strict=True)]
            return JSONResponse({"items": items, "history_length": len(history)})

        @app.post("/rank", response_model=schemas.RankResponse)
        async def rank(body: schemas.RankRequest):
            s = service._need(service.rank, "rank", "ranker")
            features = service._check(s.features, body)
            scores = await service._submit("rank", features)
            order = sorted(range(len(body.candidates)), key=lambda i: -scores["satisfaction"][i])
            heads = [h for h in ("click", "cvr", "dwell_log") if h in scores]
            ranked = [{"index": i, "satisfaction": float(scores["satisfaction"][i]),
                       **{h: float(scores[h][i]) for h in heads}} for i in order]
            return JSONResponse({"candidates": ranked})

        @app.post("/items", response_model=schemas.ItemsResponse, dependencies=[Depends(service._authorized)])
        async def items(body: schemas.ItemsRequest):
            if service.search is None and service.recommend is None:
                raise ClientError(404, "/items: no relevance or next_item run is served")
            refused = service.recommend.can_add() if service.recommend is not None else None
            if service.search is not None:
                for n, item in enumerate(body.items):
                    service._check(_title_check, n, item)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, service.journal.append, "items", [i.model_dump() for i in body.items])
            done = {}
            for target in service.item_targets():  # on the thread of its first stage, between two batches
                done[target.endpoint] = await loop.run_in_executor(service.executors[target.endpoint][0], target.add,
                                                                   body.items)
            for s in service.services:
                service.metrics.catalogue.labels(s.endpoint).set(s.size)
            return schemas.ItemsResponse(searchable=done.get("search", 0), recommendable=done.get("recommend", 0),
                                         notes=[refused] if refused else [])

        @app.post("/events", response_model=schemas.EventsResponse, dependencies=[Depends(service._authorized)])
        async def events(body: schemas.EventsRequest):
            s = service._need(service.recommend, "events", "next_item")
            service._check(s.check_known, "events.item_id", [e.item_id for e in body.events])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, service.journal.append, "events", [e.model_dump() for e in body.events])
            sessions = {e.session_id: s.sessions.add(e.session_id, e.item_id) for e in body.events}
            return schemas.EventsResponse(accepted=len(body.events), sessions=sessions)


class _AccessLog:
    """Counts, latency and one JSON log line per request (plain ASGI: Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            endpoint = path.strip("/") or "root"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if endpoint not in ("metrics", "healthz"):
                self.metrics.latency.labels(endpoint).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({"ts": round(time.time(), 3), "method": scope["method"], "path": path,
                                            "status": status, "ms": round(1e3 * seconds, 2),
                                            "client": client[0] if client else None}))


def _title_check(n: int, item: schemas.NewItem) -> None:
    from ecomjax.data.relevance import normalize_text

    if not normalize_text(item.title):
        raise InputError(f"items[{n}].title: {item.title!r} is empty after normalisation")


def _json_id(item) -> int | str:
    return item.item() if hasattr(item, "item") else item
