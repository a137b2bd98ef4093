"""Prometheus metrics of the HTTP service (``GET /metrics``, text format), one registry per
service so two services in one process (tests) do not mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# milliseconds-scale buckets: the acceptance targets are tens of milliseconds
LATENCY = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("ecomjax_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("ecomjax_request_seconds", "Request latency (received to answered)",
                                 ["endpoint"], buckets=LATENCY, registry=self.registry)
        self.stages = Histogram("ecomjax_stage_seconds", "Time per stage: queue (waiting for a batch), "
                                "model (the batch's call) and the search pipeline's stages",
                                ["endpoint", "stage"], buckets=LATENCY, registry=self.registry)
        self.batch = Histogram("ecomjax_batch_size", "Requests per model call", ["endpoint"],
                               buckets=BATCH, registry=self.registry)
        self.catalogue = Gauge("ecomjax_catalogue_items", "Items a served model can return", ["endpoint"],
                               registry=self.registry)
        self.sessions = Gauge("ecomjax_sessions", "Sessions in the session store", registry=self.registry)

    def observe_batch(self, endpoint: str, size: int, seconds: float, waits: list[float]) -> None:
        self.batch.labels(endpoint).observe(size)
        self.stages.labels(endpoint, "model").observe(seconds)
        queue = self.stages.labels(endpoint, "queue")
        for wait in waits:
            queue.observe(wait)

    def text(self) -> bytes:
        return generate_latest(self.registry)
