"""The data dir's lock: proof that a server is alone on the embedded store.

With the default store (SQLite index and payloads in the data dir) the process that serves
(a single server, or the master of ``--workers N``) holds an exclusive ``fcntl.flock`` on
``DATA/server.lock`` for its whole life, and so does ``admin import-soledad``, the other
command that writes payloads there. Whoever holds it knows that no other process is
between a payload's commit and its index row, so the start-up sweep may take every orphan
at once (grace 0) instead of waiting an hour for a crash's orphans to age.

The kernel drops a flock when the last descriptor of its open file goes, however its
processes die: nothing stale ever needs breaking. The workers of ``--workers N`` never take
the lock; they inherit the master's descriptor, so that if the master is killed the lock
stays held until its last worker, still finishing its uploads, has exited. A server that
finds the lock held by such a gone master waits for those workers; one held by a live
process is an error at once. The lock file's content names the holder (pid, host, command,
since when), for that error.

PostgreSQL metadata or S3 payloads may be shared by servers on many machines: no lock in a
data dir proves anything there, so those stores take none and keep the grace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from multiprocessing import reduction
from typing import Any

from blobsync.lockinfo import LockHolder
from blobsync.server.config import ConfigError, ServerConfig
from blobsync.server.storage.modes import FILE_MODE, private_dir

log = logging.getLogger("blobsync.server")

LOCK_NAME = "server.lock"
# How long a server waits for the workers of a killed master to exit: they drain their
# requests for 5 s (app.SHUTDOWN_TIMEOUT) and are gone well before this.
DEAD_HOLDER_WAIT = 30.0
POLL = 0.1


class DataDirBusy(ConfigError):
    exit_code = 1


def embedded(config: ServerConfig) -> bool:
    """Whether the store lives whole in the data dir (nothing on PostgreSQL, S3, memory)."""
    return config.metadata is None and config.payload is None


class Holder(LockHolder):
    """Who holds the lock, as its content says (fields may be missing or garbled)."""

    def describe(self) -> str:
        return f"{self.command or 'another process'} ({self.who} on {self.where}, " \
               f"since {self.when})"


class DataDirLock:
    """The held lock of one data dir; ``fd`` is its descriptor (inherited by workers)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)  # the flock goes with the last descriptor of the open file

    def for_child(self) -> InheritedLock:
        """What to hand a spawned worker so that it keeps the lock alive while it runs."""
        return InheritedLock(self.fd)


class InheritedLock:
    """The master's lock descriptor, passed to a worker of ``multiprocessing``'s spawn.

    Pickled while the worker is being spawned, it asks multiprocessing to pass the
    descriptor itself (``DupFd``), so the worker shares the master's open file and flock.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, (reduction.DupFd(self.fd),)


def _rebuild(dup: Any) -> InheritedLock:
    return InheritedLock(dup.detach())


@contextlib.contextmanager
def hold_data_dir(config: ServerConfig, command: str) -> Iterator[DataDirLock | None]:
    """Hold the data dir's lock for the block: the lock, or None when the store is not
    embedded or the file system has no flock (then nothing proves we are alone).

    Raises DataDirBusy naming the holder when another live process has it.
    """
    if not embedded(config):
        yield None
        return
    lock = acquire(config.data, command)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def acquire(data_dir: str, command: str, *,
            dead_holder_wait: float = DEAD_HOLDER_WAIT) -> DataDirLock | None:
    data_dir = os.path.abspath(data_dir)
    private_dir(data_dir)
    path = os.path.join(data_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # one an older umask or a copy left loose
        deadline: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("cannot lock %s (%s): not provably alone on the data dir, so "
                            "the start-up sweep keeps the grace", path, exc.strerror)
                os.close(fd)
                return None
            holder = Holder.parse(os.pread(fd, 4096, 0))
            if holder is None or not holder.gone():
                raise DataDirBusy(_busy(data_dir, holder))
            # The master that took it is dead; its workers hold it while they finish.
            if deadline is None:
                deadline = time.monotonic() + dead_holder_wait
                log.info("the data dir %s is still locked for %s, which is gone: waiting "
                         "for its workers to exit", data_dir, holder.describe())
            elif time.monotonic() >= deadline:
                raise DataDirBusy(_busy(data_dir, holder) + " (its workers never exited)")
            time.sleep(POLL)
        _write_holder(fd, command)
    except BaseException:
        os.close(fd)
        raise
    return DataDirLock(path, fd)


def _busy(data_dir: str, holder: Holder | None) -> str:
    who = holder.describe() if holder else "another process"
    return (f"the data directory {data_dir} is in use by {who}; only one server or import "
            "may use it at a time")


def _write_holder(fd: int, command: str) -> None:
    data = Holder.note(command)
    # Only the message of a process that cannot get in would miss it: the lock holds.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
