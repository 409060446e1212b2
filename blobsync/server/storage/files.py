"""Payloads as files, in Soledad's sharded layout.

A committed payload lives at ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``
(or ``{id}~{hex}`` beside it when that name is taken), and its location is that path
relative to ``root``. Writes go to ``{root}/.tmp/{pid}/`` first, are fsynced, and are then
hard-linked into place: ``os.link`` refuses an existing name, so no two writers ever share
a location, and a reader never sees a half-written file. A process that dies leaves only
its temp dir behind, which the next ``open()`` of any process removes.

Blocking calls run in the default thread pool so the event loop never waits on the disk.
``store_many`` commits a run of small payloads (a stream upload's batch) in one thread hop,
with the same guarantees per payload and one fsync per directory for the whole run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from blobsync.format.limits import CHUNK_SIZE, valid_id

from .base import BlobNotFound, PayloadStore, PayloadWriter
from .modes import DIR_MODE, FILE_MODE, fsync_dir, private_dir, tighten

TMP_DIR = ".tmp"

log = logging.getLogger(__name__)

# Bytes per thread hop when reading a file out, passed on whole: a hop and a socket write
# cost tens of microseconds whatever their size, small against copying 256 KiB.
READ_CHUNK = 4 * CHUNK_SIZE

# Temp files this process is writing right now, so that open() of a second FilePayloads in
# the same process (tests, or a reload) never removes a live writer's file.
_ACTIVE_TEMPS: set[str] = set()


def shard_parts(user: str, namespace: str, blob_id: str) -> tuple[str, ...]:
    """Soledad's layout; the three shard levels keep any one directory small."""
    return (user, namespace, blob_id[0], blob_id[:3], blob_id[:6])


def files_below(
    top: str | os.PathLike[str], on_dir: Callable[[str], None] | None = None
) -> Iterator[tuple[str, os.stat_result]]:
    """Every file below ``top`` with its lstat (links not followed); one that vanishes
    while the walk goes is left out. ``on_dir`` is called with each directory, top too."""
    for dirpath, _dirs, files in os.walk(top):
        if on_dir is not None:
            on_dir(dirpath)
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                yield path, os.lstat(path)
            except FileNotFoundError:
                continue


def _makedirs_durable(root: str, parts: tuple[str, ...]) -> str:
    """Create ``root/parts...``; fsync the parent of every dir created so it survives."""
    dirty: set[str] = set()
    path = _makedirs(root, parts, dirty)
    for parent in dirty:
        fsync_dir(parent)
    return path


def _makedirs(root: str, parts: tuple[str, ...], dirty: set[str]) -> str:
    """Create ``root/parts...``; add the parent of every dir created to ``dirty``, for the
    caller to fsync (``_makedirs_durable`` without the fsyncs, for batches)."""
    path = root
    for part in parts:
        parent, path = path, os.path.join(path, part)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        dirty.add(parent)
    return path


# fsyncs wait on the disk, not on the GIL: a few threads let them overlap.
_SYNC_THREADS = 8
_sync_pool: concurrent.futures.ThreadPoolExecutor | None = None
_sync_pool_pid = 0


def _fsync_all(sync: Callable[[Any], None], targets: list[Any]) -> None:
    """``sync(t)`` for every target, up to _SYNC_THREADS at a time; the first error wins
    once all have ended."""
    global _sync_pool, _sync_pool_pid
    if len(targets) <= 1:
        for t in targets:
            sync(t)
        return
    if _sync_pool is None or _sync_pool_pid != os.getpid():  # none yet, or forked since
        _sync_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=_SYNC_THREADS, thread_name_prefix="fsync"
        )
        _sync_pool_pid = os.getpid()
    futures = [_sync_pool.submit(sync, t) for t in targets]
    concurrent.futures.wait(futures)
    for f in futures:
        f.result()


def _read_files(paths: list[str], locations: list[str]) -> list[bytes]:
    out: list[bytes] = []
    for path, location in zip(paths, locations, strict=True):
        try:
            with open(path, "rb", buffering=0) as f:
                out.append(f.read())
        except FileNotFoundError:
            raise BlobNotFound(f"no payload at {location}") from None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class _FdJobs:
    """Run blocking calls on one fd in threads, and close it only when none is running.

    A task cancelled while its thread is inside write() or pread() cannot stop that thread;
    closing the fd under it would let the number be reused by another open() and the
    late write land in the wrong file. So close waits for the running job, in a callback.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._running: concurrent.futures.Future[Any] | None = None
        self._closed = False

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("fd already closed")
        loop = asyncio.get_running_loop()
        cf: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def job() -> None:
            if not cf.set_running_or_notify_cancel():
                return
            try:
                cf.set_result(func(self.fd, *args))
            except BaseException as exc:  # handed to the awaiting task
                cf.set_exception(exc)

        self._running = cf
        loop.run_in_executor(None, job)
        return await asyncio.wrap_future(cf)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Close the fd (now, or when the running job ends), then call ``then``."""
        if self._closed:
            return
        self._closed = True

        def finish(_: object = None) -> None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            if then is not None:
                then()

        running = self._running
        if running is not None and not running.done():
            running.add_done_callback(finish)
        else:
            finish()


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


class PayloadFileWriter(PayloadWriter):
    """One payload on its way into a file: a temp file, linked into place by ``commit``."""

    def __init__(self, store: FilePayloads, parts: tuple[str, ...], blob_id: str) -> None:
        self._store = store
        self._parts = parts
        self._blob_id = blob_id
        self._tmp = ""
        self._jobs: _FdJobs | None = None
        # Small chunks (an HTTP body arrives in pieces of a few KiB) are gathered so each
        # thread hop writes at least CHUNK_SIZE bytes (larger pieces go as they come).
        self._buf = bytearray()
        self._written = 0
        self._done = False

    async def _start(self) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(self._store._new_temp))
        try:
            self._tmp, fd = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The thread creates the file anyway; remove it once it has.
            def cleanup(t: asyncio.Future[tuple[str, int]]) -> None:
                if not t.cancelled() and t.exception() is None:
                    path, fd = t.result()
                    os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    _ACTIVE_TEMPS.discard(path)

            task.add_done_callback(cleanup)
            raise
        self._jobs = _FdJobs(fd)

    async def _flush(self) -> None:
        assert self._jobs is not None
        if self._buf:
            # Handed over, not copied: the thread owns this buffer until write() returns.
            data, self._buf = self._buf, bytearray()
            await self._jobs.run(_write_all, data)
            self._written += len(data)

    async def write(self, chunk: bytes) -> None:
        if self._done or self._jobs is None:
            raise RuntimeError("write after commit or abort")
        self._buf += chunk
        if len(self._buf) >= CHUNK_SIZE:
            await self._flush()

    async def commit(self) -> str:
        if self._done or self._jobs is None:
            raise RuntimeError("commit after commit or abort")
        await self._flush()
        expected = self._written

        def durable(fd: int) -> None:
            # Re-check what reached the file: a short write would otherwise be committed.
            st = os.fstat(fd)
            if st.st_size != expected:
                raise OSError(errno.EIO, f"temp file has {st.st_size} bytes, wrote {expected}")
            os.fsync(fd)

        await self._jobs.run(durable)
        location = await asyncio.to_thread(
            self._store._link_into_place, self._tmp, self._parts, self._blob_id
        )
        self._done = True
        self._release()
        return location

    def _release(self) -> None:
        """Close the fd and remove the temp name (after commit the final link keeps it)."""
        tmp = self._tmp

        def unlink() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            _ACTIVE_TEMPS.discard(tmp)

        if self._jobs is not None:
            self._jobs.close(unlink)

    async def abort(self) -> None:
        # After a commit the location belongs to the caller, who deletes it if needed.
        if self._done:
            return
        self._done = True
        self._buf.clear()
        self._release()


def _link_exclusive(tmp: str, shard: str, blob_id: str) -> str:
    """Link ``tmp`` into ``shard`` under ``blob_id``, or ``blob_id~hex`` if that is taken.

    os.link never replaces: another writer's bytes stay untouched. The index decides which
    of us wins; the loser deletes its own location. Returns the name used.
    """
    name = blob_id
    while True:
        try:
            os.link(tmp, os.path.join(shard, name))
            return name
        except FileExistsError:
            name = f"{blob_id}~{os.urandom(8).hex()}"


class FilePayloads(PayloadStore):
    batched_reads = True  # read_many reads a run in one go

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.tmp_root = os.path.join(self.root, TMP_DIR)

    # housekeeping -----------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        private_dir(self.root)  # and the data dir above it, if it is new
        private_dir(self.tmp_root)
        me = os.getpid()
        files = size = 0  # what crashed processes left, for the log

        def unlink(path: str) -> None:
            nonlocal files, size
            with contextlib.suppress(FileNotFoundError):
                size += os.lstat(path).st_size
                os.unlink(path)
                files += 1

        for entry in os.scandir(self.tmp_root):
            try:
                pid = int(entry.name)
            except ValueError:
                pid = -1  # not a name we make: a leftover all the same
            if not entry.is_dir(follow_symlinks=False):
                unlink(entry.path)
            elif pid == me:
                # A previous process with our pid (common in containers) may have left
                # files; keep only those this process is writing.
                for f in os.scandir(entry.path):
                    if f.path not in _ACTIVE_TEMPS:
                        unlink(f.path)
            elif pid <= 0 or not _pid_alive(pid):
                for _path, st in files_below(entry.path):
                    files, size = files + 1, size + st.st_size
                shutil.rmtree(entry.path, ignore_errors=True)
        if files:
            # A crash mid-upload can leave gigabytes here; say where the space came from.
            log.info("removed %d temp files (%d bytes) that dead processes left in %s",
                     files, size, self.tmp_root)

    def _my_tmp_dir(self) -> str:
        # Looked up per writer, not cached: a server may fork its workers after creating us.
        path = os.path.join(self.tmp_root, str(os.getpid()))
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _new_temp(self) -> tuple[str, int]:
        path = os.path.join(self._my_tmp_dir(), os.urandom(12).hex())
        # Registered before it exists, so a concurrent open() never sees it unregistered.
        _ACTIVE_TEMPS.add(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            _ACTIVE_TEMPS.discard(path)
            raise
        return path, fd

    def _link_into_place(self, tmp: str, parts: tuple[str, ...], blob_id: str) -> str:
        shard = _makedirs_durable(self.root, parts)
        name = _link_exclusive(tmp, shard, blob_id)
        try:
            fsync_dir(shard)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(shard, name))
            raise
        return "/".join((*parts, name))

    # many small payloads at once ----------------------------------------------------------
    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Commit many small payloads, each to a location of its own; return the locations.

        The same guarantees as a writer's commit, per payload, at a fraction of the cost:
        one thread hop for the whole run, each file fsynced once, and every directory that
        gained an entry fsynced once at the end instead of once per payload. When this
        returns, every payload is durable at its location. If it raises, none of the
        locations it made is left behind.
        """
        for value in (user, namespace, *(blob_id for blob_id, _ in items)):
            if not valid_id(value):
                raise ValueError(f"not a valid name: {value!r}")
        return await asyncio.to_thread(self._store_many_sync, user, namespace, items)

    def _store_many_sync(self, user: str, namespace: str,
                         items: list[tuple[str, bytes]]) -> list[str]:
        temps: list[str] = []
        fds: list[int] = []
        finals: list[str] = []
        try:
            for _, data in items:
                path, fd = self._new_temp()
                temps.append(path)
                fds.append(fd)
                _write_all(fd, data)
                if os.fstat(fd).st_size != len(data):
                    raise OSError(errno.EIO, f"temp file is short of {len(data)} bytes")
            # Concurrent fsyncs share the filesystem's journal commits: on a busy disk a
            # run of them costs a fraction of the same fsyncs one after the other.
            _fsync_all(os.fsync, fds)
            dirty: set[str] = set()  # directories that gained an entry
            locations: list[str] = []
            for (blob_id, _), tmp in zip(items, temps, strict=True):
                parts = shard_parts(user, namespace, blob_id)
                shard = _makedirs(self.root, parts, dirty)
                name = _link_exclusive(tmp, shard, blob_id)
                finals.append(os.path.join(shard, name))
                dirty.add(shard)
                locations.append("/".join((*parts, name)))
            # Each directory once, however many entries it gained; all of them are durable
            # before anyone indexes, so their order does not matter.
            _fsync_all(fsync_dir, list(dirty))
            return locations
        except BaseException:
            for path in finals:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for path in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                _ACTIVE_TEMPS.discard(path)

    async def read_many(self, locations: list[str]) -> list[bytes]:
        """The whole payloads at ``locations``, in one thread hop (small ones: the caller
        bounds their total). BlobNotFound if any is missing."""
        paths = [self._path(location) for location in locations]
        return await asyncio.to_thread(_read_files, paths, locations)

    # the interface ----------------------------------------------------------------------
    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter:
        for value in (user, namespace, blob_id):
            if not valid_id(value):
                raise ValueError(f"not a valid name: {value!r}")
        w = PayloadFileWriter(self, shard_parts(user, namespace, blob_id), blob_id)
        await w._start()
        return w

    def file_path(self, location: str) -> str:
        """The file holding a committed payload: a GET sends it with sendfile(2), the
        kernel copying page cache to socket, instead of through Python in chunks."""
        return self._path(location)

    def _path(self, location: str) -> str:
        parts = location.split("/")
        # Locations come from our own index, but a path must never leave the root.
        if (
            len(parts) != 6
            or parts[0] == TMP_DIR
            or any(not valid_id(p.split("~", 1)[0]) for p in parts)
        ):
            raise ValueError(f"not a file location: {location!r}")
        return os.path.join(self.root, *parts)

    async def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(location)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(f"no payload at {location}") from None
        jobs = _FdJobs(fd)
        try:
            pos = max(offset, 0)
            end = None if length is None else pos + max(length, 0)
            while end is None or pos < end:
                want = READ_CHUNK if end is None else min(READ_CHUNK, end - pos)
                block = await jobs.run(_pread, want, pos)
                if not block:
                    break
                pos += len(block)
                yield block
        finally:
            jobs.close()

    async def delete(self, location: str) -> None:
        path = self._path(location)
        # Empty shard dirs stay: removing one could race a writer about to link into it.
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)

    async def delete_many(self, locations: list[str]) -> None:
        """Remove several payloads in one thread hop (gc)."""
        paths = [self._path(location) for location in locations]

        def unlink_all() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

        if paths:
            await asyncio.to_thread(unlink_all)

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        # One thread hop per first-level shard dir bounds memory to one shard's listing.
        tops = await asyncio.to_thread(self._shard_tops)
        for top in tops:
            for item in await asyncio.to_thread(self._walk, top):
                yield item

    def _shard_tops(self) -> list[Path]:
        tops: list[Path] = []
        root = Path(self.root)
        if not root.is_dir():
            return tops
        for user in root.iterdir():
            if user.name == TMP_DIR or not user.is_dir():
                continue
            for ns in user.iterdir():
                if ns.is_dir():
                    tops.extend(d for d in ns.iterdir() if d.is_dir())
        return tops

    def _walk(self, top: Path) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        # gc walks every shard anyway: it also tightens what an older blobsync left open
        # (the server's start-up sweep so brings an old data dir to 0700/0600).
        tighten(top.parent.parent, DIR_MODE)  # user dir
        tighten(top.parent, DIR_MODE)  # namespace dir
        for path, st in files_below(top, on_dir=lambda d: tighten(d, DIR_MODE)):
            if not stat.S_ISREG(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & ~FILE_MODE:
                tighten(path, FILE_MODE)
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            # ctime moves when the file is linked into place, so it is the commit time even
            # for an upload whose last write was long ago.
            found.append((rel, max(st.st_mtime, st.st_ctime)))
        return found
