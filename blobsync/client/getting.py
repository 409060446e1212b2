"""The get path: a blob's verified plaintext, from the local store or downloaded, into
memory, a file (``dest``, unnamed until it verified), a device or FIFO, or a stream.

``BlobManager.get`` and ``open_stream`` delegate here, and ``check`` opens local blobs
with ``open_local``. A ``Getter`` is handed what it uses (the store, the sync engine, the
storage secret, the writer lock), nothing of the manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from blobsync.format import InvalidBlob

from .destfile import DestFile, Target, ThroughFile, release_reader
from .destfile import resolve as resolve_dest
from .errors import BlobExists, BlobNotFound, ClientError, is_no_space, no_space
from .localstore import Row
from .model import ProgressCallback, SyncStatus, check_ids
from .parts import UsesParts
from .tracking import Tracker, counted
from .verified import Provisional, open_into, reread_chunks


class Getter(UsesParts):
    async def get(
        self, namespace: str, blob_id: str, rank: int, dest: str | Path | None,
        progress: ProgressCallback | None = None,
    ) -> bytes | None:
        """BlobManager.get (its docstring says what) with the ids checked."""
        if dest is None:
            # Returned whole: held in memory, as the caller will hold it.
            async with Provisional(self.store.tmp_dir, memory_max=None) as held:
                await self._open_into(namespace, blob_id, rank, held, progress)
                return await held.whole()
        with _writing(Path(dest)):
            target = await asyncio.to_thread(resolve_dest, Path(dest))
        if target.through:
            await self._get_through(namespace, blob_id, rank, Path(dest), target.path)
            return None
        out = await _DestOut(Path(dest), target).open()
        async with Provisional(self.store.tmp_dir, hidden=out) as held:
            await self._open_into(namespace, blob_id, rank, held, progress)
            await held.release()  # the unnamed file becomes ``dest``
        return None

    async def open_stream(self, namespace: str, blob_id: str) -> AsyncIterator[bytes]:
        """BlobManager.open_stream (its docstring says what). The ids are checked here, on
        the first ``anext``, as they were when the manager's method was the generator."""
        check_ids(namespace, blob_id)
        async with Provisional(self.store.tmp_dir) as held:
            async for chunk in await self._verified_chunks(namespace, blob_id, 1, held):
                yield chunk

    async def open_local(
        self, row: Row, held: Provisional | None, progress: ProgressCallback | None = None
    ) -> None:
        """Open a local blob into ``held`` (None: verify only); InvalidBlob if it fails.
        ``progress`` follows its sealed bytes as they are read (phase "read")."""
        chunks = self.store.read_sealed(row)
        tracker = None if progress is None else Tracker("read", progress)
        flow = None
        if tracker is not None:
            tracker.expect(row.blob_id, row.sealed_size or 0)
            flow = tracker.flow(row.blob_id)
        if flow is not None:
            chunks = counted(chunks, flow)
        await open_into(self._secret, row.blob_id, chunks, held)
        if tracker is not None:
            tracker.finished(row.blob_id, row.sealed_size)

    async def _open_into(
        self, namespace: str, blob_id: str, rank: int, held: Provisional,
        progress: ProgressCallback | None = None,
    ) -> None:
        """The blob's plaintext into ``held``, verified: opened as it downloads, or from
        the store when it is here already. One decryption either way."""
        row = await self._ensure_local(namespace, blob_id, rank, held, progress)
        if row is not None:  # local already, or kept by a concurrent download
            await held.reset()
            await self.open_local(row, held, progress)

    async def _get_through(
        self, namespace: str, blob_id: str, rank: int, dest: Path, path: Path
    ) -> None:
        """get() into a device or FIFO: nothing can be taken back once written there, so
        the whole blob verifies before ``path`` is even opened (a missing blob or a server
        error fails at once instead of first waiting for a FIFO's reader, as cp checks its
        source)."""
        async with Provisional(self.store.tmp_dir) as held:
            try:
                chunks = await self._verified_chunks(namespace, blob_id, rank, held)
                first = await anext(chunks, None)  # comes once the whole blob verified
            except BaseException:
                release_reader(path)  # a reader waiting on the FIFO gets EOF, not a hang
                raise
            sink = ThroughFile(path)
            with _writing(dest):
                await sink.open()  # a FIFO waits here for its reader
            try:
                while first is not None:
                    with _writing(dest):
                        await sink.write(first)
                    first = await anext(chunks, None)
                with _writing(dest):
                    await sink.finish()
            finally:
                sink.close()

    async def _verified_chunks(
        self, namespace: str, blob_id: str, rank: int, held: Provisional
    ) -> AsyncIterator[bytes]:
        """The blob's verified plaintext, opened once as it downloads (into ``held``,
        which spills to an unnamed file), or, when local, from the store without a copy
        on disk (verified.reread_chunks)."""
        row = await self._ensure_local(namespace, blob_id, rank, held)
        if row is None:
            return held.chunks()
        return reread_chunks(self._secret, row.blob_id, lambda: self.store.read_sealed(row))

    async def _ensure_local(
        self, namespace: str, blob_id: str, rank: int, held: Provisional | None,
        progress: ProgressCallback | None = None,
    ) -> Row | None:
        """Download the blob unless it is local. Returns the local row when the plaintext
        still has to be read from the store; None when ``held`` got it from the download.
        ``progress`` follows the download's sealed bytes."""
        row = await self.store.get(namespace, blob_id)
        if row is not None and row.has_payload:
            return row  # a reader: no lock, no waiting
        async with self.lock.hold("get"):
            return await self._fetch(namespace, blob_id, rank, held, progress)

    async def _fetch(
        self, namespace: str, blob_id: str, rank: int, held: Provisional | None,
        progress: ProgressCallback | None = None,
    ) -> Row | None:
        row = await self.store.get(namespace, blob_id)
        if row is not None and row.has_payload:
            return row  # kept by another process while this one waited for the lock
        if row is not None and row.status is SyncStatus.PENDING_DELETE:
            raise BlobNotFound(f"blob {blob_id} is deleted (namespace {namespace})")
        if row is None:
            try:
                await self.store.insert(
                    namespace, blob_id, SyncStatus.PENDING_DOWNLOAD, priority=rank
                )
            except BlobExists:
                pass
        elif rank > row.priority:
            await self.store.update(namespace, blob_id, priority=rank)
        tracker = None if progress is None else Tracker("download", progress)
        if tracker is not None:
            tracker.seen.add(blob_id)
        try:
            kept = await self.engine.download(
                await self._row(namespace, blob_id), held,
                None if tracker is None else tracker.flow(blob_id),
            )
        except InvalidBlob:
            await self.engine._verify_failed(None, namespace, blob_id)
            raise
        except BlobNotFound:
            await self.store.remove_many(
                namespace, [blob_id],
                only_if=[SyncStatus.PENDING_DOWNLOAD, SyncStatus.FAILED_DOWNLOAD],
            )
            raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})") from None
        if kept is None:
            row = await self.store.get(namespace, blob_id)
            if row is None or not row.has_payload:
                raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})")
            return row
        if tracker is not None:
            tracker.finished(blob_id, kept)
        return None

    async def _row(self, namespace: str, blob_id: str) -> Row:
        row = await self.store.get(namespace, blob_id)
        if row is None:
            raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})")
        return row


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """OSErrors of writing get()'s ``dest`` as one line naming it; a full disk as NoSpace."""
    try:
        yield
    except OSError as exc:
        what = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and str(exc.filename) != str(dest):
            what = f"{what}: {exc.filename}"
        if is_no_space(exc):
            raise no_space(exc, f"writing {dest}") from None
        raise ClientError(f"cannot write {dest}: {what}") from None


class _DestOut:
    """The file get() writes for ``dest``: unnamed until ``commit`` (see destfile.py), a
    ``Hidden`` target of a Provisional holder. ``target`` says where the file goes (a
    symlink's target) and its mode. OSErrors come out as one line naming ``dest``."""

    def __init__(self, dest: Path, target: Target) -> None:
        self.dest = dest
        self.target = target
        self._file: DestFile | None = None

    async def open(self) -> _DestOut:
        target = self.target
        with _writing(self.dest):
            self._file = await asyncio.to_thread(
                DestFile(target.path, target.mode, target.owner).open
            )
        return self

    async def write(self, data: bytes) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await self._file.write(data)

    async def reset(self) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await asyncio.to_thread(self._file.reset)

    async def commit(self) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await asyncio.to_thread(self._file.commit)
        self._file = None

    async def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.abort)
