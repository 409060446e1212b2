"""BlobStore: the one object the HTTP routes use to store, read and delete blobs.

It joins a MetadataIndex and a PayloadStore in the write order of ``base``: payload first,
durable at a location of its own, then the index row. Whatever goes wrong on the way (bad
bytes, a dropped connection, a lost race, a full quota) leaves the blob absent; once the
row is in, the blob is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

from blobsync.format.errors import BlobsyncError, LimitExceeded, ProtocolError
from blobsync.format.preamble import TAG_SIZE
from blobsync.format.verifier import SealedVerifier, check_structure

from .base import (
    BATCH_BLOB_MAX,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    BlobReplaced,
    MetadataIndex,
    NewBlob,
    PayloadStore,
    PayloadWriter,
    QuotaExceeded,
    StorageError,
)

T = TypeVar("T")

# A stream upload gathers blobs up to BATCH_BLOB_MAX bytes in memory and stores them
# together once BATCH_COUNT of them or BATCH_BYTES are waiting (or the body pauses): one
# stream then holds at most about BATCH_BYTES + BATCH_BLOB_MAX. Larger blobs go through
# ``put``, chunk by chunk.
BATCH_BYTES = 1 << 20
# How often a GET looks a blob up again when it was replaced under the read (open_blob).
READ_ATTEMPTS = 3
BATCH_COUNT = 256

Outcome = BlobInfo | BlobExists | QuotaExceeded
# A blob waiting in a StreamBatch: (blob_id, sealed bytes, tag, meta or None).
_Waiting = tuple[str, bytes, bytes, str | None]

# Orphans gc deletes per call of PayloadStore.delete_many (one SQLite transaction each).
GC_DELETE_BATCH = 500


class StoreObserver(Protocol):
    """Told what a BlobStore did, whichever route or stream asked it (metrics listen here).

    Called on the event loop right after the fact; it must be quick and must not raise.
    """

    def on_stored(self, info: BlobInfo) -> None:
        """A blob is indexed: by ``put`` or in a batch."""

    def on_stored_many(self, infos: list[BlobInfo]) -> None:
        """Blobs indexed together, by a batch: ``on_stored`` for each, in one call (a
        counter bumped per blob cost more than the rest of the count)."""

    def on_refused(self, exc: BlobsyncError) -> None:
        """A blob write was refused (BlobExists, QuotaExceeded, InvalidBlob, ...)."""

    def on_deleted(self, info: BlobInfo) -> None:
        """A blob's row is gone."""

    def on_served(self, nbytes: int) -> None:
        """``nbytes`` more sealed bytes were read out of the store for a client."""


class NullObserver:
    """The observer of a store nobody watches."""

    def on_stored(self, info: BlobInfo) -> None:
        pass

    def on_stored_many(self, infos: list[BlobInfo]) -> None:
        pass

    def on_refused(self, exc: BlobsyncError) -> None:
        pass

    def on_deleted(self, info: BlobInfo) -> None:
        pass

    def on_served(self, nbytes: int) -> None:
        pass


class _SealedCheck:
    """A body as it streams in: the size it announced, the size limit, and the rules of a
    sealed blob (format.verifier: the store has no key, so the tag is not checked). Holds
    at most the head and the last 16 bytes, which become the blob's ``Tag``."""

    def __init__(self, blob_id: str, size: int | None, max_size: int | None) -> None:
        self.size = size
        self.max_size = max_size
        self.received = 0
        self._verifier = SealedVerifier(blob_id)
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.size is not None and self.received > self.size:
            raise ProtocolError(f"body is longer than the {self.size} bytes announced")
        if self.max_size is not None and self.received > self.max_size:
            raise LimitExceeded(f"blob is larger than the limit of {self.max_size} bytes")
        self._verifier.feed(chunk)
        # The last 16 bytes of the whole blob, head included when it is that short (an
        # external blob's Tag is its last bytes, whatever they are).
        self.tail = (self.tail + bytes(chunk[-TAG_SIZE:]))[-TAG_SIZE:]

    def finish(self) -> None:
        if self.size is not None and self.received != self.size:
            raise ProtocolError(f"body is {self.received} bytes, {self.size} announced")
        self._verifier.finish()


class BlobStore:
    def __init__(
        self,
        index: MetadataIndex,
        payloads: PayloadStore,
        *,
        quota: int = 0,
        max_blob_size: int | None = None,
        observer: StoreObserver | None = None,
    ) -> None:
        self.index = index
        self.payloads = payloads
        self.quota = quota
        self.max_blob_size = max_blob_size
        # Settable: the storage factory builds the store, the server wires its metrics.
        self.observer: StoreObserver = observer if observer is not None else NullObserver()
        # Cleanups that outlive a cancelled put; close() waits for them.
        self._background: set[asyncio.Task[Any]] = set()
        # Committed here but not indexed yet: gc in this process never takes them.
        self._unindexed: set[str] = set()
        # Start times of the writes under way here, from before their first payload byte
        # to the end of their index insert: gc spares every payload younger than the
        # oldest, so a payload committed (or about to be) by this process is never an
        # orphan to it, whatever the grace. Other processes are covered by the grace alone.
        self._writes: dict[int, float] = {}
        self._write_ids = itertools.count()
        self._handed_off: set[int] = set()  # writes that a task running on will end
        # Called with the user after every write that appended to the user's change feed
        # (the server's ChangeHub wakes that user's waiters in this process).
        self.on_change: Callable[[str], None] = lambda user: None

    async def open(self) -> None:
        await self.index.open()
        await self.payloads.open()

    async def close(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.payloads.close()
        await self.index.close()

    def _spawn(self, make: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            await make()

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # writing ----------------------------------------------------------------------------
    async def put(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int | None = None,
        flags: frozenset[str] = frozenset(),
        meta: str | None = None,
    ) -> BlobInfo:
        """Store a blob from its sealed bytes; ``meta``: its sealed meta (SPEC 11), checked
        by the caller (``check_meta_text``) and kept with the row as it is."""
        try:
            info = await self._put(user, namespace, blob_id, chunks, size=size, flags=flags,
                                   meta=meta)
        except BlobsyncError as exc:
            self.observer.on_refused(exc)
            raise
        self.observer.on_stored(info)
        self.on_change(user)
        return info

    async def _put(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int | None,
        flags: frozenset[str],
        meta: str | None = None,
    ) -> BlobInfo:
        token = self._write_begins()
        try:
            return await self._put_tracked(user, namespace, blob_id, chunks, size, flags, token,
                                           meta)
        except BaseException:
            # A commit or an insert that runs on past a cancel ends the write itself.
            if token not in self._handed_off:
                self._write_ends(token)
            raise

    def _write_begins(self) -> int:
        token = next(self._write_ids)
        self._writes[token] = time.time()
        return token

    def _write_ends(self, token: int) -> None:
        self._writes.pop(token, None)
        self._handed_off.discard(token)

    async def _put_tracked(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        chunks: AsyncIterable[bytes],
        size: int | None,
        flags: frozenset[str],
        token: int,
        meta: str | None = None,
    ) -> BlobInfo:
        # Cheap refusals first, before a byte is stored (the index re-checks at the end),
        # in the one order of every backend and route: size (413), id (409), quota (507).
        if size is not None:
            if size < 0:
                raise ProtocolError(f"size {size} is negative")
            if self.max_blob_size is not None and size > self.max_blob_size:
                raise LimitExceeded(f"blob is larger than the limit of {self.max_blob_size} bytes")
        if await self.index.get_blob(user, namespace, blob_id) is not None:
            raise BlobExists(f"blob {blob_id} exists")
        if size is not None and self.quota > 0:
            if await self.index.usage(user) + size > self.quota:
                raise QuotaExceeded(f"quota of {self.quota} bytes exceeded")

        check = _SealedCheck(blob_id, size, self.max_blob_size)
        writer = await self.payloads.writer(user, namespace, blob_id)
        try:
            async for chunk in chunks:
                if chunk:
                    check.feed(chunk)
                    await writer.write(chunk)
            check.finish()
        except BaseException:
            await writer.abort()
            raise
        location = await self._commit(writer, token)
        self._unindexed.add(location)
        return await self._insert(
            user, namespace, blob_id, check.received, check.tail, location, flags, token, meta
        )

    async def _commit(self, writer: PayloadWriter, token: int) -> str:
        task = asyncio.ensure_future(writer.commit())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The commit runs on; whatever it ends with must not stay visible.
            def settle(t: asyncio.Future[str]) -> None:
                if not t.cancelled() and t.exception() is None:
                    location = t.result()

                    async def drop() -> None:
                        try:
                            await self.payloads.delete(location)
                        finally:
                            self._write_ends(token)

                    self._spawn(drop)
                else:
                    self._write_ends(token)
                    self._spawn(writer.abort)

            self._handed_off.add(token)
            task.add_done_callback(settle)
            raise
        except BaseException:
            await writer.abort()
            raise

    async def _insert(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        size: int,
        tag: bytes,
        location: str,
        flags: frozenset[str],
        token: int,
        meta: str | None = None,
    ) -> BlobInfo:
        task = asyncio.ensure_future(
            self.index.insert_blob(
                user, namespace, NewBlob(blob_id, size, tag, location, frozenset(flags), meta),
                quota=self.quota,
            )
        )

        def indexed(_: object) -> None:
            # Row in or refused: from now on gc may judge the payload by the index alone.
            self._unindexed.discard(location)
            self._write_ends(token)

        task.add_done_callback(indexed)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # A dropped connection must not undo a row that gets in after all (the blob is
            # then complete), nor leave a payload that no row names.
            def settle(t: asyncio.Future[BlobInfo]) -> None:
                if t.cancelled() or t.exception() is not None:
                    self._spawn(lambda: self._drop_unless_indexed(user, namespace, blob_id,
                                                                  location))

            if not task.done():
                self._handed_off.add(token)  # ``indexed`` ends the write
            task.add_done_callback(settle)
            raise
        except (BlobExists, QuotaExceeded):
            await self.payloads.delete(location)  # the row is surely not ours
            raise
        except BaseException:
            await self._drop_unless_indexed(user, namespace, blob_id, location)
            raise

    async def _drop_unless_indexed(
        self, user: str, namespace: str, blob_id: str, location: str
    ) -> None:
        """After an insert of unknown outcome: delete the payload if no row names it."""
        try:
            info = await self.index.get_blob(user, namespace, blob_id)
        except Exception:
            return  # cannot tell; gc decides later, and it only takes what no row names
        if info is None or info.location != location:
            await self.payloads.delete(location)

    # writing many small blobs -----------------------------------------------------------
    def batch(self, user: str, namespace: str) -> StreamBatch:
        """A StreamBatch for one stream upload of ``user`` into ``namespace``."""
        return StreamBatch(self, user, namespace)

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` for close() to wait on; its failure is its awaiter's business."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _store_run(self, user: str, namespace: str, run: list[_Waiting]) -> list[Outcome]:
        """Payloads of ``run`` ((blob_id, sealed, tag, meta), checked) durable first, then their
        rows in one transaction; payloads whose row did not go in are deleted."""
        token = self._write_begins()  # this task runs to its end, cancelled caller or not
        try:
            return await self._store_run_tracked(user, namespace, run)
        finally:
            self._write_ends(token)

    async def _store_run_tracked(
        self, user: str, namespace: str, run: list[_Waiting]
    ) -> list[Outcome]:
        locations = await self.payloads.store_many(
            user, namespace, [(blob_id, data) for blob_id, data, _, _ in run]
        )
        self._unindexed.update(locations)
        try:
            rows = [
                NewBlob(blob_id, len(data), tag, location, meta=meta)
                for (blob_id, data, tag, meta), location in zip(run, locations, strict=True)
            ]
            try:
                outcomes = await self.index.insert_blobs(user, namespace, rows, quota=self.quota)
            except BaseException:
                for (blob_id, _, _, _), location in zip(run, locations, strict=True):
                    await self._drop_unless_indexed(user, namespace, blob_id, location)
                raise
            # Reported before the payload deletes below, which may fail: the rows are in.
            stored = self._report(outcomes)
            if stored:
                self.on_change(user)
            for i, location in enumerate(locations):
                if i >= len(outcomes) or not isinstance(outcomes[i], BlobInfo):
                    await self.payloads.delete(location)  # not ours: a row names another
        finally:
            self._unindexed.difference_update(locations)
        return outcomes

    def _report(self, outcomes: list[Outcome]) -> bool:
        """Tell the observer a batch's outcomes, in order, each run of stored blobs in one
        call; whether any was stored."""
        run: list[BlobInfo] = []
        stored = False
        for outcome in outcomes:
            if isinstance(outcome, BlobInfo):
                run.append(outcome)
                continue
            if run:
                self.observer.on_stored_many(run)
                stored, run = True, []
            self.observer.on_refused(outcome)
        if run:
            self.observer.on_stored_many(run)
            stored = True
        return stored

    # reading ----------------------------------------------------------------------------
    async def read(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        offset: int = 0,
        length: int | None = None,
    ) -> tuple[BlobInfo, AsyncGenerator[bytes, None]]:
        info = await self.index.get_blob(user, namespace, blob_id)
        if info is None:
            raise BlobNotFound(f"no blob {blob_id}")
        chunks = self.payloads.read(info.location, offset, length)
        # Pull the first chunk now: a payload deleted since the lookup is then a 404 here,
        # before the route has sent a status line.
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return info, _chain(None, chunks, self.observer)
        return info, _chain(first, chunks, self.observer)

    async def open_file(self, info: BlobInfo) -> BinaryIO | None:
        """The payload of ``info`` as an open file, when the payload store keeps it as one
        (``file_path``), for a route to send with sendfile. None otherwise, or when it is
        gone or replaced since ``info`` was looked up: the caller then reads through
        ``read``, which sorts that out. An open file keeps its bytes even if the payload
        is deleted meanwhile; but file locations are reused after a delete and a new PUT
        of the same id, so the file is the one looked up only if the row still names it
        with the same tag once it is open."""
        path = self.payloads.file_path(info.location)
        if path is None:
            return None
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            return None
        now = await self.index.get_blob(info.user, info.namespace, info.blob_id)
        if now is None or (now.location, now.tag) != (info.location, info.tag):
            file.close()
            return None
        return file

    async def open_blob(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        span: Callable[[BlobInfo], tuple[int, int]],
        *,
        as_file: bool,
    ) -> OpenBlob:
        """A blob opened for a GET: the bytes ``span`` picks of it (offset, length),
        as an open file (``open_file``) when ``as_file`` and the store can, else as chunks.

        A blob deleted and stored again between the lookup and the read would give the
        bytes of another row than the one ``span`` judged: then it is looked up again, up
        to READ_ATTEMPTS times, and BlobReplaced (409) after. BlobNotFound if absent.
        """
        for _ in range(READ_ATTEMPTS):
            info = await self.index.get_blob(user, namespace, blob_id)
            if info is None:
                raise BlobNotFound(f"no blob {blob_id!r} in namespace {namespace!r}")
            offset, length = span(info)
            file = await self.open_file(info) if as_file else None
            if file is not None:
                return OpenBlob(info, offset, length, file, None)
            read_info, chunks = await self.read(user, namespace, blob_id, offset, length)
            if read_info.location == info.location:
                return OpenBlob(info, offset, length, None, chunks)
            await chunks.aclose()  # replaced between the two lookups: ask again
        raise BlobReplaced("the blob is being replaced; try again")

    async def read_run(self, infos: list[BlobInfo]) -> list[bytes]:
        """The whole payloads of rows in hand (a stream download's run of small blobs), in
        one go where the payload store can (``read_many``); counted as served. StorageError
        if one is not the size its row says (deleted and replaced since)."""
        payloads = await self.payloads.read_many([info.location for info in infos])
        for info, data in zip(infos, payloads, strict=True):
            if len(data) != info.size:
                raise StorageError(
                    f"blob {info.blob_id!r}: {len(data)} bytes read, {info.size} indexed"
                )
        self.observer.on_served(sum(info.size for info in infos))
        return payloads

    def read_located(self, info: BlobInfo) -> AsyncGenerator[bytes, None]:
        """The payload of a row in hand, chunk by chunk, each counted as served when it
        goes out. No new lookup: a payload deleted since raises or comes up short."""
        return _counted(self.payloads.read(info.location, 0, info.size), self.observer)

    def served(self, nbytes: int) -> None:
        """Count bytes a route sent from an ``open_file`` file (``read`` counts its own)."""
        self.observer.on_served(nbytes)

    # deleting ---------------------------------------------------------------------------
    async def delete(self, user: str, namespace: str, blob_id: str) -> None:
        # Row first: from then on nobody can find the payload, so removing it is safe. A
        # crash in between leaves an orphan for gc, never a row without bytes.
        info = await self.index.delete_blob(user, namespace, blob_id)
        self.observer.on_deleted(info)
        self.on_change(user)
        await self.payloads.delete(info.location)

    # flags ------------------------------------------------------------------------------
    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        await self.index.set_flags(user, namespace, blob_id, flags, expect=expect)
        self.on_change(user)

    async def gc(self, grace_seconds: float = 3600) -> int:
        """Delete payloads no row names, older than ``grace_seconds``; return how many.

        The grace covers puts between commit and index insert in other processes; the
        writes under way in this one are spared whatever their age (``_writes``).
        """
        removed, _ = await self._collect(grace_seconds)
        return removed

    async def _collect(self, grace_seconds: float) -> tuple[int, int]:
        """gc's work: (orphans removed, orphans spared as too young)."""
        cutoff = min([time.time(), *self._writes.values()]) - max(grace_seconds, 0.0)
        indexed = await self.index.all_locations()
        candidates: list[str] = []
        spared = 0
        async for location, mtime in self.payloads.locations():
            if location in indexed or location in self._unindexed:
                continue
            if mtime <= cutoff:
                candidates.append(location)
            else:
                spared += 1
        if not candidates:
            return 0, spared
        # Look again: a row inserted while we walked must save its payload.
        indexed = await self.index.all_locations()
        doomed = [loc for loc in candidates if loc not in indexed and loc not in self._unindexed]
        for i in range(0, len(doomed), GC_DELETE_BATCH):
            await self.payloads.delete_many(doomed[i : i + GC_DELETE_BATCH])
        return len(doomed), spared

    async def sweep(self, grace_seconds: float) -> SweepReport:
        """Remove orphan payloads older than ``grace_seconds`` (as ``gc``), then give the
        space deletions freed back to the filesystem (``PayloadStore.reclaim``)."""
        started = time.monotonic()
        removed, spared = await self._collect(grace_seconds)
        reclaimed = await self.payloads.reclaim()
        return SweepReport(removed, spared, reclaimed, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """What ``BlobStore.open_blob`` opened: the row, the span, and the bytes either as an
    open file (the caller sends it and closes it) or as chunks (``BlobStore.read``'s)."""

    info: BlobInfo
    offset: int
    length: int
    file: BinaryIO | None
    chunks: AsyncGenerator[bytes, None] | None


@dataclass(frozen=True, slots=True)
class SweepReport:
    removed: int  # orphan payloads deleted
    spared: int  # orphan payloads younger than the grace: maybe uploads under way elsewhere
    reclaimed: int  # bytes given back to the filesystem
    seconds: float


async def _chain(
    first: bytes | None, rest: AsyncGenerator[bytes, None], observer: StoreObserver
) -> AsyncGenerator[bytes, None]:
    try:
        if first is not None:
            observer.on_served(len(first))
            yield first
            async for chunk in rest:
                observer.on_served(len(chunk))
                yield chunk
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()


async def _counted(
    chunks: AsyncGenerator[bytes, None], observer: StoreObserver
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in chunks:
            observer.on_served(len(chunk))
            yield chunk
    finally:
        await chunks.aclose()


class StreamBatch:
    """The small blobs of one stream upload, stored together.

    ``receive`` takes one blob's chunks and checks them as ``BlobStore.put`` does (same
    errors), keeping the sealed bytes in memory: only blobs that ``fits`` are given to it,
    and the caller flushes once ``full``, so one batch holds about BATCH_BYTES at most.
    ``flush`` stores what waits: one pass of file writes and fsyncs for the whole run,
    then one index transaction. Atomicity stays per blob: each payload is durable at a
    location of its own before the transaction that indexes it commits, so a crash leaves
    every blob complete or absent (an unindexed payload is an orphan for gc).
    """

    def __init__(self, store: BlobStore, user: str, namespace: str) -> None:
        self.store = store
        self.user = user
        self.namespace = namespace
        self._waiting: list[_Waiting] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def ids(self) -> list[str]:
        """The blobs waiting, in order."""
        return [blob_id for blob_id, _, _, _ in self._waiting]

    @staticmethod
    def fits(size: int) -> bool:
        return size <= BATCH_BLOB_MAX

    @property
    def full(self) -> bool:
        return len(self._waiting) >= BATCH_COUNT or self._bytes >= BATCH_BYTES

    async def receive(
        self, blob_id: str, chunks: AsyncIterable[bytes], size: int, meta: str | None = None
    ) -> None:
        """Take one blob whose declared ``size`` fits. Raises what ``put`` raises for bad
        bytes (InvalidBlob, ProtocolError, LimitExceeded); nothing is kept then."""
        if not self.fits(size):
            raise ValueError(f"blob of {size} bytes does not fit a batch")
        check = _SealedCheck(blob_id, size, self.store.max_blob_size)
        buf = bytearray()
        try:
            async for chunk in chunks:
                if chunk:
                    check.feed(chunk)
                    buf += chunk
            check.finish()
        except BlobsyncError as exc:
            self.store.observer.on_refused(exc)  # as put reports its refusals
            raise
        self._waiting.append((blob_id, bytes(buf), check.tail, meta))
        self._bytes += len(buf)

    def take(self, blob_id: str, data: bytes, size: int, meta: str | None = None) -> None:
        """``receive`` for a blob whose bytes are all in hand (a stream reader's usual
        case for a small blob): the same checks and errors, in one call and no copy."""
        if not self.fits(size):
            raise ValueError(f"blob of {size} bytes does not fit a batch")
        max_size = self.store.max_blob_size
        if len(data) != size or (max_size is not None and size > max_size):
            # Rare (a reader hands over exactly the size declared, and the route checked
            # the limit): the incremental check sorts out which error comes first.
            check = _SealedCheck(blob_id, size, max_size)
            try:
                check.feed(data)
                check.finish()
            except BlobsyncError as exc:
                self.store.observer.on_refused(exc)
                raise
            raise AssertionError("a wrong size or limit passed the check")  # pragma: no cover
        try:
            check_structure(blob_id, data)
        except BlobsyncError as exc:
            self.store.observer.on_refused(exc)  # as put reports its refusals
            raise
        # The last 16 bytes of the whole blob, as _SealedCheck keeps them.
        self._waiting.append((blob_id, data, data[-TAG_SIZE:], meta))
        self._bytes += size

    async def flush(self) -> list[tuple[str, Outcome]]:
        """Store the waiting blobs; (blob_id, outcome) for each, in order: BlobInfo when
        stored, BlobExists when another was there first. A QuotaExceeded outcome ends the
        list: the blobs after it are not stored.

        Runs to its end even if the caller is cancelled (a dropped connection must not
        leave a half-stored run); the store's close() waits for it.
        """
        run, self._waiting, self._bytes = self._waiting, [], 0
        if not run:
            return []
        task = asyncio.ensure_future(self.store._store_run(self.user, self.namespace, run))
        self.store._track(task)
        outcomes = await asyncio.shield(task)
        return [(b[0], outcome) for b, outcome in zip(run, outcomes, strict=False)]
