"""``blobsync server --workers N``: N server processes on one machine sharing its ports.

The master process never serves. It
1. checks the TLS files, then, on the embedded store, takes the data dir's lock
   (datalock.py) for its whole life, and hands its descriptor to every worker, so that
   the lock outlives a killed master until its last worker has exited,
2. binds both ports itself (with SO_REUSEPORT, not listening), so that a port in use or a
   bad certificate is one error line and exit 1 before any worker starts, and so that
   port 0 becomes one port that every worker binds,
3. opens the store once and closes it: schema migrations and the removal of temp files a
   crashed process left behind happen once, before any worker exists; holding the lock,
   it sweeps the orphans of a crash then too, with no grace (no worker can be writing),
4. points PROMETHEUS_MULTIPROC_DIR at a fresh temp dir (prometheus_client's multiprocess
   mode), so that /metrics on any worker sums all of them,
5. starts the workers with multiprocessing's *spawn* method: each is a fresh interpreter,
   with no event loop, thread, SQLite or PostgreSQL connection inherited from the master,
6. forwards SIGTERM and SIGINT to them, and exits when they have all exited.

Each worker binds the public and local ports with SO_REUSEPORT; the kernel spreads new
connections over them. Workers share nothing but the store, which is built for it: SQLite
in WAL mode (the index, and the small payloads) with per-process temp dirs for payload
files, or PostgreSQL and S3.

A worker that dies on its own (a crash, or a failure to start) brings the others down and
the master exits 1: a supervisor (systemd, a container runtime) then restarts the whole,
rather than the master hiding a worker that keeps dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from blobsync.server.config import ConfigError, ServerConfig
from blobsync.server.datalock import InheritedLock

log = logging.getLogger("blobsync.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# After a stop was asked, workers get this long to drain before they are killed; above the
# server's own shutdown timeout, so that a healthy worker always finishes by itself.
STOP_GRACE = 30.0
READY = b"ready"
POLL_SECONDS = 1.0


# --------------------------------------------------------------------------- master


def serve_workers(config: ServerConfig, workers: int) -> int:
    """Run ``workers`` server processes until a signal stops them; return the exit code."""
    from blobsync.server.app import ssl_context

    if workers < 1:
        raise ValueError("workers must be at least 1")
    from blobsync.server.datalock import hold_data_dir

    ssl_context(config)  # raises ConfigError now rather than in every worker
    with (
        hold_data_dir(config, f"blobsync server --workers {workers}") as lock,
        _reserved_ports(config) as config,
        _metrics_dir(),
    ):
        swept = _prepare_store(config, alone=lock is not None)
        inherited = lock.for_child() if lock is not None else None
        return _Master(config, workers, inherited, swept).run()


@contextlib.contextmanager
def _reserved_ports(config: ServerConfig) -> Iterator[ServerConfig]:
    """Bind both ports with SO_REUSEPORT, without listening (the kernel hands connections
    only to listening sockets), and hold them while the workers run.

    A port another program listens on fails here, once. Port 0 means "any free port",
    which each worker would pick for itself: the one bound here is given to them all.
    """
    from blobsync.server.config import host_port

    held: list[socket.socket] = []
    changes: dict[str, int] = {}
    try:
        for host_key, port_key in (("host", "port"), ("local_host", "local_port")):
            host, port = getattr(config, host_key), getattr(config, port_key)
            try:
                sock = _reserve(host, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host_port(host, port)}: {exc.strerror or exc}"
                ) from None
            held.append(sock)
            changes[port_key] = sock.getsockname()[1]
        yield config.replace(**changes)
    finally:
        for sock in held:
            sock.close()


def _reserve(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # The same options as the workers' sockets (aiohttp sets SO_REUSEADDR), so that a
        # restart is not refused for connections of the last run still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _metrics_dir() -> Iterator[str]:
    """The shared dir of the workers' metric files: ours, or the one the operator named.

    prometheus_client wants it empty at start (stale files of dead processes would count
    again), so a given dir is emptied of its .db files, and ours is removed at the end.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(given, name))
        yield given
        return
    path = tempfile.mkdtemp(prefix="blobsync-metrics-")
    os.environ[MULTIPROC_ENV] = path  # inherited by the workers spawned from here on
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _prepare_store(config: ServerConfig, *, alone: bool) -> bool:
    """Open the store once (migrate, create the bucket, clean stray temp files), close it.

    ``alone`` (the data dir's lock is ours): sweep with no grace in between. Return
    whether that start-up sweep was done (worker 0 then waits an interval for its first).
    """
    from blobsync.server.storage.factory import make_store
    from blobsync.server.storage.sweep import sweep_alone

    async def run() -> bool:
        store = make_store(config.data, config.metadata, config.payload,
                           inline_max=config.inline_max)
        await store.open()
        try:
            if alone and config.sweep_interval > 0:
                return await sweep_alone(store) is not None
            return False
        finally:
            await store.close()

    return asyncio.run(run())


class _Master:
    def __init__(self, config: ServerConfig, count: int, lock: InheritedLock | None,
                 swept: bool) -> None:
        self.config = config
        self.count = count
        self.lock = lock
        self.swept = swept
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}  # index -> multiprocessing Process
        self.ready_pipes: dict[int, Connection] = {}
        self.stop_signal: int | None = None
        self.failed = False
        self.deadline: float | None = None

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_all()
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for proc in self.procs.values():  # only if supervising itself failed
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        clean = self.stop_signal is not None and not self.failed
        return 0 if clean and all(p.exitcode == 0 for p in self.procs.values()) else 1

    def _start_all(self) -> None:
        master = os.getpid()
        for index in range(self.count):
            if self.stop_signal is not None:
                break  # stopped while starting: start no more
            reader, writer = self.ctx.Pipe(duplex=False)
            proc = self.ctx.Process(
                target=worker_main,
                args=(self.config, index, master, writer, self.lock, self.swept),
                name=f"blobsync-worker-{index}",
            )
            proc.start()
            writer.close()  # the worker holds its own copy; EOF here means it is gone
            self.procs[index] = proc
            self.ready_pipes[index] = reader
            log.info("started worker %d (pid %d)", index, proc.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            log.info("stopping %d workers", len(self.procs))
        self._stop_all(signum)

    def _stop_all(self, signum: int) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def _supervise(self) -> None:
        alive = dict(self.procs)
        while alive:
            # Bounded, so that a stop asked by a signal during the wait gets its deadline
            # checked: an interrupted wait resumes with the timeout it started with.
            timeout = POLL_SECONDS
            if self.deadline is not None:
                timeout = min(timeout, max(0.0, self.deadline - time.monotonic()))
            waitables: list[Any] = [p.sentinel for p in alive.values()]
            waitables += list(self.ready_pipes.values())
            done = multiprocessing.connection.wait(waitables, timeout)
            if not done and self.deadline is not None and time.monotonic() >= self.deadline:
                for index, proc in alive.items():
                    log.error("worker %d (pid %d) did not stop in time: killed", index, proc.pid)
                    proc.kill()
                self.failed = True
                self.deadline = time.monotonic() + STOP_GRACE
            self._read_ready(done)
            for index, proc in list(alive.items()):
                if proc.sentinel in done or not proc.is_alive():
                    proc.join()
                    del alive[index]
                    self._exited(index, proc)
        if self.stop_signal is not None and not self.failed:
            log.info("all workers stopped")

    def _read_ready(self, done: list[Any]) -> None:
        for index, pipe in list(self.ready_pipes.items()):
            if pipe not in done:
                continue
            try:
                pipe.recv_bytes()
                log.info("worker %d ready", index)
            except (EOFError, OSError):
                pass  # exited before it was ready; its sentinel tells
            pipe.close()
            del self.ready_pipes[index]
            if not self.ready_pipes and self.stop_signal is None and not self.failed:
                log.info("all %d workers ready", self.count)

    def _exited(self, index: int, proc: Any) -> None:
        _forget_metrics_of(proc.pid)
        if self.stop_signal is None and not self.failed:
            log.error("worker %d (pid %d) exited with code %s: stopping the others",
                      index, proc.pid, proc.exitcode)
            self.failed = True
            self._stop_all(signal.SIGTERM)
        elif proc.exitcode != 0:
            log.warning("worker %d (pid %d) exited with code %s", index, proc.pid,
                        proc.exitcode)


def _forget_metrics_of(pid: int) -> None:
    """Drop a dead worker's live gauges (in-progress requests); its counters stay summed."""
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# --------------------------------------------------------------------------- worker


def worker_main(config: ServerConfig, index: int, master: int, ready: Connection,
                lock: InheritedLock | None = None, swept: bool = False) -> None:
    """One worker: the whole server, binding its ports with SO_REUSEPORT.

    ``lock``: the master's lock descriptor, kept open (never closed, never locked anew)
    for as long as this process lives; ``swept``: the master's start-up sweep is done.
    """
    del lock  # its descriptor stays open until this process exits; that is its whole job
    # Its own process group: a Ctrl-C in a terminal reaches the master only, which passes
    # it on once; a worker that got it twice would die in the middle of its shutdown.
    os.setpgid(0, 0)
    _die_with(master)
    from blobsync.allocator import tune_allocator
    from blobsync.server.app import run_server
    from blobsync.server.logs import setup_logging

    tune_allocator()
    setup_logging(config.log_level)

    async def on_ready(_store: Any, _sites: Any) -> None:
        with contextlib.suppress(OSError):
            ready.send_bytes(READY)
            ready.close()

    try:
        asyncio.run(run_server(config, on_ready=on_ready, reuse_port=True, worker=index,
                               swept=swept))
    except KeyboardInterrupt:
        pass  # a stop that came before the server had its signal handlers
    except Exception as exc:  # noqa: BLE001 - one line in the log, then exit 1
        log.error("worker %d: %s", index, exc)
        raise SystemExit(1) from None


PR_SET_PDEATHSIG = 1


def _die_with(master: int) -> None:
    """Get SIGTERM when the master dies, even by SIGKILL (Linux): no orphan keeps serving."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != master:  # it died before we asked
        raise SystemExit(1)
