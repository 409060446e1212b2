"""Prometheus metrics, served at ``GET /metrics`` on the local port.

Three pieces: ``Metrics`` (the metric objects), ``metrics_middleware`` (requests, status,
latency and bytes of every request of an app) and ``StoreMetrics``, the BlobStore observer
that counts blobs stored, refused, deleted and served where they happen, whichever route or
stream moved them. A server on S3 payloads also counts every request it sends to the object
store, by operation (``blobsync_s3_requests_total``, fed by storage/s3.py's hook).

Labels stay bounded: the route is the route's pattern (``/blobs/{uuid}/{blob_id}``), never
the path, so user names and blob ids never become label values.

With ``--workers N`` every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode, chosen when that variable is set before
prometheus_client is imported: the master sets it before starting workers), and whichever
worker answers ``/metrics`` sums them all.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from blobsync.format.errors import BlobsyncError
from blobsync.server.sent import sent_bytes
from blobsync.server.storage.base import BlobInfo

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
UNMATCHED = "unmatched"
# Up to a few minutes: a large blob's upload is one request.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The metric objects of one server process.

    Without multiprocess mode they live in a registry of their own, so that several servers
    in one process (tests) count apart. In multiprocess mode the values live in files, and a
    process must hold only one ``Metrics``: two would overwrite each other's counts.
    """

    def __init__(self, worker: int = 0) -> None:
        self.worker = str(worker)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "blobsync_http_requests", "HTTP requests answered, by route and status",
            ["method", "route", "status"], registry=r,
        )
        self.errors = Counter(
            "blobsync_http_errors",
            "HTTP requests that failed: kind is client (4xx), server (5xx) or dropped "
            "(the connection went away before the answer was sent)",
            ["method", "route", "kind"], registry=r,
        )
        self.latency = Histogram(
            "blobsync_http_request_duration_seconds",
            "Time from the request's arrival to the end of its answer",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.bytes_in = Counter(
            "blobsync_http_received_bytes", "Request body bytes received", ["route"],
            registry=r,
        )
        self.bytes_out = Counter(
            "blobsync_http_sent_bytes", "Response bytes sent, headers included", ["route"],
            registry=r,
        )
        self.in_progress = Gauge(
            "blobsync_http_requests_in_progress", "Requests being served now",
            registry=r, multiprocess_mode="livesum",
        )
        self.worker_requests = Counter(
            "blobsync_worker_requests", "Requests served by each worker process (--workers)",
            ["worker"], registry=r,
        )
        self.blobs_stored = Counter(
            "blobsync_blobs_stored", "Blobs stored (PUT, stream upload, incoming delivery)",
            registry=r,
        )
        self.blob_bytes_stored = Counter(
            "blobsync_blob_stored_bytes", "Sealed bytes of the blobs stored", registry=r,
        )
        self.blobs_deleted = Counter("blobsync_blobs_deleted", "Blobs deleted", registry=r)
        self.blob_bytes_served = Counter(
            "blobsync_blob_served_bytes", "Sealed bytes read out of the store for clients",
            registry=r,
        )
        self.puts_refused = Counter(
            "blobsync_blob_puts_refused",
            "Blob writes refused, by reason (the error class: BlobExists, QuotaExceeded, "
            "InvalidBlob, LimitExceeded, ...)",
            ["reason"], registry=r,
        )
        self.s3_requests = Counter(
            "blobsync_s3_requests",
            "Requests sent to the S3 object store of the payloads, by operation (PutObject, "
            "GetObject, HeadObject, ...; every attempt, retries included)",
            ["op"], registry=r,
        )
        self._hear_s3()

    def _hear_s3(self) -> None:
        """Count the S3 requests of this process from its start, if it uses S3.

        Only a server on S3 payloads has imported storage/s3.py (aiobotocore's import costs
        0.2 s, so nobody else should), and it has by now: its store is built before its
        metrics. What was sent before (the bucket check, the start-up sweep) is added first.
        """
        s3 = sys.modules.get("blobsync.server.storage.s3")
        if s3 is None:
            return
        for op, n in s3.REQUESTS.items():
            self.s3_requests.labels(op).inc(n)
        s3.add_request_listener(self.count_s3_request)

    def count_s3_request(self, op: str) -> None:
        self.s3_requests.labels(op).inc()

    def render(self) -> bytes:
        """The text exposition format: of every worker in multiprocess mode, else of ours."""
        if multiprocess_mode():
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _error_kind(status: int) -> str | None:
    if status >= 500:
        return "server"
    if status >= 400:
        return "client"
    return None


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Count every request of the app; install it outermost, so it sees the final status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        method = request.method if request.method in METHODS else "other"
        route = route_of(request)
        status: int | None = None
        metrics.in_progress.inc()
        try:
            resp = await handler(request)
            status = resp.status
            try:
                # Sent here rather than after us, so that the latency and the byte count
                # cover the whole answer. aiohttp's own prepare and write_eof then do
                # nothing; a client gone meanwhile is what aiohttp would see too.
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError:
                status = None
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # Anything else escaping (a cancelled handler, a connection the handler cut)
            # means no answer reached the client: status stays None, counted as dropped.
            metrics.in_progress.dec()
            metrics.latency.labels(method, route).observe(time.perf_counter() - start)
            metrics.requests.labels(method, route, str(status or "dropped")).inc()
            metrics.worker_requests.labels(metrics.worker).inc()
            kind = "dropped" if status is None else _error_kind(status)
            if kind is not None:
                metrics.errors.labels(method, route, kind).inc()
            received = getattr(request.content, "total_bytes", 0)
            if received:
                metrics.bytes_in.labels(route).inc(received)
            sent = sent_bytes(request)
            if sent:
                metrics.bytes_out.labels(route).inc(sent)

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    # Reading the workers' files is disk work: keep it off the event loop.
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def install(app: web.Application, metrics: Metrics, *, serve: bool = False) -> None:
    """Count ``app``'s requests; with ``serve``, also answer ``GET /metrics`` on it."""
    app[METRICS] = metrics
    app.middlewares.insert(0, metrics_middleware(metrics))
    if serve:
        app.router.add_get("/metrics", metrics_handler, allow_head=False)


class StoreMetrics:
    """The ``StoreObserver`` that counts what a BlobStore stores, refuses, deletes and serves.

    The store reports each of these itself, whichever route, stream or batch moved the
    blob, so nothing is counted twice or missed; the storage factory that builds the
    store knows nothing of metrics: ``start_sites`` sets ``store.observer`` to one of these.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_stored(self, info: BlobInfo) -> None:
        self.metrics.blobs_stored.inc()
        self.metrics.blob_bytes_stored.inc(info.size)

    def on_stored_many(self, infos: list[BlobInfo]) -> None:
        self.metrics.blobs_stored.inc(len(infos))
        self.metrics.blob_bytes_stored.inc(sum(info.size for info in infos))

    def on_refused(self, exc: BlobsyncError) -> None:
        self.metrics.puts_refused.labels(type(exc).__name__).inc()

    def on_deleted(self, info: BlobInfo) -> None:
        self.metrics.blobs_deleted.inc()

    def on_served(self, nbytes: int) -> None:
        self.metrics.blob_bytes_served.inc(nbytes)
