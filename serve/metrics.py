"""Prometheus metrics of the server: requests, latencies, micro-batches and the index it serves.

Each app has its own registry, so several apps in one process (tests) do not share counters.
Requests are labelled by route template (`/documents/{doc_id:path}`), never by raw path, and by a
known HTTP method or "other", so nothing a client sends can make a new time series.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class IndexCollector(Collector):
    """Generation, counts (edits too) and bytes of the index, read from `stats()` at each scrape."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for key, name, doc in (
            ("generation", "rag_index_generation", "Generation of the index snapshot being served"),
            ("passages", "rag_index_passages", "Live passages in the index"),
            ("documents", "rag_index_documents", "Live documents in the index"),
            ("deleted", "rag_index_deleted_passages", "Tombstoned passage versions kept for snapshots"),
            ("bytes", "rag_index_bytes", "Size of the index folder on disk"),
            ("edits", "rag_index_edits", "Active edits in the index's edit memory"),
            ("edits_total", "rag_index_edits_recorded", "Edits ever made, revoked and superseded ones included"),
        ):
            yield GaugeMetricFamily(name, doc, value=stats[key])


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self, index_stats: Callable[[], dict], queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rag_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("rag_http_request_duration_seconds", "HTTP request latency by method and route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("rag_ask_batch_size", "Questions answered together in one micro-batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("rag_ask_batch_duration_seconds", "Time to answer one micro-batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        Gauge("rag_ask_queue_depth", "Questions waiting for a micro-batch",
              registry=self.registry).set_function(queue_depth)
        self.registry.register(IndexCollector(index_stats))

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one answered micro-batch."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware that counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0  # until a response starts
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500  # what the client gets if the app fails before answering
            raise
        finally:
            route, method = route_of(scope), scope["method"] if scope["method"] in METHODS else "other"
            # An app that returns without answering saw its client go away first: 499, as nginx logs it, not an error.
            self.metrics.requests.labels(method, route, str(status or 499)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


def route_of(scope: Scope) -> str:
    """The template of the route a request went to, or "unmatched". A body refused before routing (serve/body.py) counts
    under its path when that is a route's own: the routes taking bodies have no path parameters."""
    route = scope.get("route")
    if route is not None:
        return route.path
    paths = scope["app"].openapi()["paths"] if "app" in scope else {}  # FastAPI builds the schema once
    return scope["path"] if scope["path"] in paths else "unmatched"
