"""The two aiohttp applications and the process that runs them.

The public app (SPEC 3-5) and the local app (SPEC 6, incoming box) share one BlobStore but
listen on separate sockets, so the local endpoint is never reachable from the public one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from blobsync.server.config import (
    ConfigError,
    ServerConfig,
    describe,
    exposure_warnings,
    host_port,
)
from blobsync.server.errors import error_middleware
from blobsync.server.expect import expect_handler
from blobsync.server.feed import HUB, ChangeHub
from blobsync.server.logs import ACCESS_LOGGER, AccessLogger
from blobsync.server.metrics import Metrics, StoreMetrics, install
from blobsync.server.openapi import build_openapi
from blobsync.server.params import CONFIG, STORE
from blobsync.server.routes_blobs import (
    delete_blob,
    get_blob,
    list_blobs,
    put_blob,
    put_checks,
    server_info,
    set_flags,
)
from blobsync.server.routes_changes import changes
from blobsync.server.routes_incoming import deliver, deliver_checks
from blobsync.server.routes_stream import stream, stream_checks
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.sweep import Sweeper, sweep_alone

log = logging.getLogger("blobsync.server")

# On SIGTERM, requests in flight get this long to finish before their connections drop;
# uploads cut short leave nothing behind, so waiting longer buys nothing.
SHUTDOWN_TIMEOUT = 5.0


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())


def _base_app(store: BlobStore, config: ServerConfig) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[STORE] = store
    app[CONFIG] = config
    return app


def make_public_app(
    store: BlobStore, config: ServerConfig, *, alone: bool = False
) -> web.Application:
    """``alone``: no other process can commit to this store's index (a single server
    holding the data dir's lock), so the hub need not follow other processes' commits."""
    app = _base_app(store, config)
    r = app.router
    # HEAD is not part of the protocol; leaving it out keeps the OpenAPI document exact.
    r.add_get("/", server_info, allow_head=False)
    r.add_get("/openapi.json", _openapi, allow_head=False)
    r.add_get("/blobs/{uuid}", list_blobs, allow_head=False)
    r.add_get("/blobs/{uuid}/{blob_id}", get_blob, allow_head=False)
    # Uploads answer `Expect: 100-continue` only once their checks have passed (expect.py).
    r.add_put("/blobs/{uuid}/{blob_id}", put_blob, expect_handler=expect_handler(put_checks))
    r.add_post("/blobs/{uuid}/{blob_id}", set_flags)
    r.add_delete("/blobs/{uuid}/{blob_id}", delete_blob)
    r.add_post("/stream/{uuid}", stream, expect_handler=expect_handler(stream_checks))
    r.add_get("/changes/{uuid}", changes, allow_head=False)
    # One hub per process: commits made through either app wake this one's waiters.
    hub = app[HUB] = ChangeHub(store.index, follow=not alone)
    store.on_change = hub.notify

    async def start_hub(_app: web.Application) -> None:
        await hub.start()

    async def stop_hub(_app: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start_hub)
    app.on_shutdown.append(stop_hub)
    return app


def make_local_app(store: BlobStore, config: ServerConfig) -> web.Application:
    app = _base_app(store, config)
    app.router.add_put(
        "/incoming/{uuid}/{blob_id}", deliver, expect_handler=expect_handler(deliver_checks)
    )
    return app


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate or key: {exc}") from None
    return ctx


@dataclass
class Sites:
    """Both listening sites; ``url`` and ``local_url`` carry the ports actually bound."""

    public: web.AppRunner
    local: web.AppRunner
    url: str
    local_url: str
    metrics: Metrics

    async def stop(self) -> None:
        await self.public.cleanup()
        await self.local.cleanup()


def _url(scheme: str, runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


async def start_sites(
    store: BlobStore, config: ServerConfig, *, reuse_port: bool = False, worker: int = 0,
    alone: bool = False,
) -> Sites:
    """Start the public and local sites on the configured hosts and ports (0: any free).

    Both count their requests; the local one also serves ``GET /metrics``. ``reuse_port``
    (SO_REUSEPORT) lets the workers of ``--workers N`` bind the same ports; never by
    default, so that a second server started by mistake fails instead of sharing them.
    """
    tls = ssl_context(config)
    metrics = Metrics(worker=worker)
    store.observer = StoreMetrics(metrics)  # counts what the store does, for /metrics
    public_app = make_public_app(store, config, alone=alone)
    install(public_app, metrics)
    local_app = make_local_app(store, config)
    install(local_app, metrics, serve=True)
    runners: list[web.AppRunner] = []
    try:
        for app, host, port, ctx in (
            (public_app, config.host, config.port, tls),
            (local_app, config.local_host, config.local_port, None),
        ):
            runner = web.AppRunner(
                app,
                access_log_class=AccessLogger,
                access_log=ACCESS_LOGGER,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(
                runner, host, port, ssl_context=ctx, reuse_port=reuse_port or None
            ).start()
    except OSError as exc:
        for runner in runners:
            await runner.cleanup()
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
    public, local = runners
    return Sites(
        public, local, _url("https" if tls else "http", public), _url("http", local), metrics
    )


async def run_server(
    config: ServerConfig,
    *,
    on_ready: Callable[[BlobStore, Sites], Awaitable[None]] | None = None,
    reuse_port: bool = False,
    worker: int | None = None,
    swept: bool = False,
) -> None:
    """Open the store, serve both sites until SIGTERM or SIGINT, then clean up.

    ``worker``: this process's index among the workers of ``--workers N`` (see workers.py),
    whose master holds the data dir's lock and has swept at start-up if ``swept``. A
    single server (``worker`` None) takes the lock itself for its whole life (datalock.py;
    DataDirBusy if another process has it) and, holding it, sweeps with no grace before
    it serves.
    """
    from blobsync.server.datalock import hold_data_dir

    with contextlib.ExitStack() as stack:
        alone = False
        if worker is None:
            alone = stack.enter_context(hold_data_dir(config, "blobsync server")) is not None
        await _serve(config, on_ready, reuse_port, worker, alone, swept)


async def _serve(
    config: ServerConfig,
    on_ready: Callable[[BlobStore, Sites], Awaitable[None]] | None,
    reuse_port: bool,
    worker: int | None,
    alone: bool,
    swept: bool,
) -> None:
    from blobsync.server.storage.factory import make_store

    store = make_store(
        config.data, config.metadata, config.payload,
        quota=config.quota, max_blob_size=config.blob_limit, inline_max=config.inline_max,
    )
    await store.open()
    try:
        if alone and config.sweep_interval > 0:
            # A bad certificate or a port in use stays one error line, before the sweep's.
            ssl_context(config)
            _probe_ports(config)
            # Before the ports accept anything: no upload of ours is under way either.
            swept = await sweep_alone(store) is not None
        sweeper = _sweeper(store, config, worker, swept)
        # Alone on the embedded store: nobody else commits, so no polling for their commits
        # while requests wait (what most of an idle watcher's cost was).
        sites = await start_sites(store, config, reuse_port=reuse_port, worker=worker or 0,
                                  alone=alone and config.metadata is None)
        try:
            # Caught from before the ready line: whoever reads it may stop us at once.
            with _stop_signals() as stop:
                who = "" if worker is None else f" (worker {worker}, pid {os.getpid()})"
                if not worker:  # once, not once per worker
                    log.info("%s", describe(config))
                    for warning in exposure_warnings(config):
                        log.warning("%s", warning)
                log.info("public API on %s, incoming box on %s%s",
                         sites.url, sites.local_url, who)
                if sweeper is not None:
                    sweeper.start()
                if on_ready is not None:
                    await on_ready(store, sites)
                await stop.wait()
            log.info("shutting down")
        finally:
            if sweeper is not None:
                await sweeper.stop()
            await sites.stop()
    finally:
        await store.close()


def _probe_ports(config: ServerConfig) -> None:
    """Raise ConfigError if a port is taken: bind each address as the sites will, and let
    go at once. Port 0 is always free."""
    for host, port in ((config.host, config.port), (config.local_host, config.local_port)):
        if port == 0:
            continue
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            for family, kind, proto, _, addr in infos:
                with socket.socket(family, kind, proto) as sock:
                    # The options asyncio's create_server sets, so as to refuse just what
                    # it would refuse.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(addr)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host_port(host, port)}: {exc.strerror or exc}"
            ) from None


def _sweeper(
    store: BlobStore, config: ServerConfig, worker: int | None, swept: bool
) -> Sweeper | None:
    """The sweep of orphan payloads (storage/sweep.py): one per server, so in worker 0
    only of ``--workers N`` (the others share its storage); none if the interval is 0.
    ``swept``: the start-up sweep is done, the first one here waits an interval."""
    if config.sweep_interval <= 0 or (worker or 0) != 0:
        return None
    return Sweeper(store, config.sweep_interval, config.sweep_grace, swept=swept,
                   feed_retention=config.feed_retention or None)


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets, while the block runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
