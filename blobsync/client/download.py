"""Downloads of the sync engine: one blob alone by GET (resumed with Range), small ones
many per stream (``_FrameReader``). Every blob is verified before it is kept.

Sizes of blobs on the server are unknown until their first byte arrives (listings carry
ids only). Unknown ones go into download streams, as many per request as
``stream_max_bytes`` allows at the average size learned so far (plan.SizeBook: from the
blobs of the namespace in the store, then from every frame that arrives). A stream is
always read to its end: the server sends exactly what was asked, so hanging up at a byte
limit would only throw away what it already pushed into the socket, to be asked again.
The one exception is a frame announcing a blob larger than the stream threshold (SPEC 7:
large ones travel alone): the stream ends at its header, the size is recorded, the blob
is fetched alone (with Range resume) in the next round and the others are asked again at
once, without penalty.

``Downloads`` is a part of ``SyncEngine`` (sync.py), which orchestrates the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from blobsync.format import (
    BlobData,
    BlobEnd,
    BlobStart,
    DownstreamReader,
    FrameTagMismatch,
    InvalidBlob,
    Opened,
    Opener,
    StreamEnd,
    StreamError,
    check_sealed,
)
from blobsync.format.stream import NEED_DATA

from .errors import (
    BlobNotFound,
    ClientError,
    MissingBlobs,
    NoSpace,
    RemoteError,
    StaleRange,
    TooLarge,
    TransientError,
)
from .jobs import Job, bind, run_jobs
from .localstore import Attach, LocalFileWriter, LocalStore, Row, read_file
from .model import SyncStatus
from .plan import SizeBook, rank, take_batch
from .settings import ClientSettings
from .tracking import Flow
from .transport import Transport
from .verified import Provisional, open_into

if TYPE_CHECKING:
    from .sync import SyncEngine, _Run

log = logging.getLogger("blobsync.client.sync")

# Verified stream downloads are committed together, up to this many or this many bytes:
# one transaction per blob costs ~1 ms, which dominates for thousands of small blobs.
# As large as a stream request (ClientSettings' 1,000 blobs and 16 MiB): a stream is kept
# in one transaction pair, where 8 MiB cut every stream of 10 KB blobs in two (a commit
# and its fsyncs more each time; small sync 7,900 -> 8,700 files/s, docs/performance.md).
FLUSH_COUNT = 1000
FLUSH_BYTES = 16 << 20


class _KeyLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0



class Downloads:
    """The download half of ``SyncEngine`` (a mixin: the engine holds the state)."""

    store: LocalStore
    transport: Transport
    settings: ClientSettings
    sizes: SizeBook
    _secret: bytes
    _locks: dict[tuple[str, str], _KeyLock]
    learn_metas: Callable[[str, dict[str, str]], Awaitable[int]]  # metas.MetaSync

    async def _verify_failed(self, run: _Run | None, namespace: str, blob_id: str) -> bool:
        """Count a download that did not verify; True when the blob is given up."""
        log.warning("blob %s did not verify", blob_id)
        failed = await self.store.schedule_retry(
            namespace, [blob_id], SyncStatus.PENDING_DOWNLOAD,
            delay=self.settings.retry_delay, verify_failed=True,
            max_verify_failures=self.settings.max_verify_failures,
            failed_status=SyncStatus.FAILED_DOWNLOAD,
        )
        if failed and run is not None:
            run.report.failed.append(blob_id)
            run.trackers["download"].dropped(blob_id)
        return bool(failed)

    async def _download_round(self, run: _Run, rows: list[Row]) -> None:
        workers = self.settings.concurrency
        if not self.settings.stream:
            await run_jobs([bind(lambda r: self._single_download_job(run, r), r)
                            for r in rows], workers)
            return
        ns = run.namespace
        if not self.sizes.knows(ns):
            self.sizes.seed(ns, await self.store.size_stats(ns, self.stream_sealed_max))
        small = deque(r for r in rows if self._small(r))
        large = deque(r for r in rows if not self._small(r))

        def next_job() -> Job | None:
            # Highest priority first between the heads of both queues (each is in order).
            if large and not (small and rank(small[0]) < rank(large[0])):
                return bind(lambda r: self._single_download_job(run, r), large.popleft())
            if small:
                # Cut when a worker takes it, not beforehand: the size estimate improves
                # with every stream that came in meanwhile.
                batch = take_batch(small, self.sizes.estimate(ns),
                                   self.settings.stream_max_count, self.settings.stream_max_bytes)
                return bind(lambda b: self._stream_download(run, b), batch)
            return None

        await run_jobs(next_job, workers)

    async def _downloaded(self, run: _Run, blob_id: str, sealed_size: int) -> None:
        run.report.downloaded += 1
        run.trackers["download"].finished(blob_id, sealed_size)

    async def _single_download_job(self, run: _Run, row: Row) -> None:
        tracker = run.trackers["download"]
        try:
            sealed = await self.download(row, flow=tracker.flow(row.blob_id))
        except InvalidBlob:
            await self._verify_failed(run, row.namespace, row.blob_id)
        except BlobNotFound:
            await self.store.remove(row.namespace, row.blob_id)
            run.trackers["download"].dropped(row.blob_id)
        except (TransientError, RemoteError) as exc:
            tracker.stopped(row.blob_id)
            await self._retry(run, [row], SyncStatus.PENDING_DOWNLOAD, exc)
        else:
            if sealed is not None:
                await self._downloaded(run, row.blob_id, sealed)

    async def download(
        self, row: Row, held: Provisional | None = None, flow: Flow | None = None
    ) -> int | None:
        """Fetch one blob alone, resuming a partial download with Range, verify and keep it.

        ``held`` receives the plaintext as it is decrypted, releasable only once the blob
        verified (verified.py). ``flow`` counts the sealed bytes as they arrive. Returns
        the sealed size, or None when the row no longer wanted the payload. Raises
        InvalidBlob (partial discarded), TransientError (partial kept), BlobNotFound.
        """
        ns, blob_id = row.namespace, row.blob_id
        # One writer per partial file: a get() and a sync may want the same blob at once.
        key = (ns, blob_id)
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                fresh = await self.store.get(ns, blob_id)
                if fresh is None or fresh.status not in (
                    SyncStatus.PENDING_DOWNLOAD, SyncStatus.FAILED_DOWNLOAD
                ):
                    return None  # kept meanwhile, or no longer wanted
                return await self._download(fresh, held, flow)
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    async def _download(self, row: Row, held: Provisional | None, flow: Flow | None) -> int | None:
        ns, blob_id = row.namespace, row.blob_id
        partial = self.store.partial_path(ns, blob_id)
        offset = partial.stat().st_size if partial.exists() and row.partial_tag else 0
        for _ in range(2):
            try:
                return await self._fetch(row, partial, offset, held, flow)
            except (TransientError, asyncio.CancelledError):
                raise  # the partial file stays: the next attempt resumes it with Range
            except StaleRange:
                log.info("partial download of %s is stale, starting over", blob_id)
            except RemoteError as exc:
                if exc.status != 416:
                    raise
            except InvalidBlob:
                partial.unlink(missing_ok=True)
                await self.store.update(ns, blob_id, partial_tag=None)
                raise
            except BaseException as exc:
                # Nothing will resume from it: a full disk above all, which the partial
                # file would keep full for every other program until the next sync.
                partial.unlink(missing_ok=True)
                if not isinstance(exc, NoSpace):
                    with contextlib.suppress(ClientError):
                        await self.store.update(ns, blob_id, partial_tag=None)
                raise
            if held is not None:
                await held.reset()  # the next attempt opens the blob from its start
            partial.unlink(missing_ok=True)
            offset = 0
        raise TransientError(f"download of {blob_id} could not resume")

    async def _fetch(
        self, row: Row, partial: Path, offset: int, held: Provisional | None,
        flow: Flow | None = None,
    ) -> int | None:
        ns, blob_id = row.namespace, row.blob_id
        async with self.transport.get_blob(ns, blob_id, offset=offset) as dl:
            if dl.meta is not None:  # SPEC 11: for a blob fetched without being listed
                await self.learn_metas(ns, {blob_id: dl.meta})
            if flow is not None:
                flow.start(dl.total, offset)
            if offset:
                if dl.status != 206 or dl.offset != offset or dl.tag != row.partial_tag:
                    raise StaleRange(blob_id)
            elif dl.total is not None and dl.total <= self.store.inline_max:
                # Small enough for the database: kept from memory, no partial file (a
                # few KB are fetched again rather than resumed).
                sealed = bytearray()
                opened = await open_into(
                    self._secret, blob_id, _kept_in(dl.chunks(), sealed), held
                )
                kept = await self.store.attach_payload(
                    ns, blob_id, size=opened.size, sealed_size=len(sealed),
                    external=opened.external, payload=bytes(sealed),
                )
                return len(sealed) if kept else None
            elif dl.tag is not None:
                await self.store.update(ns, blob_id, partial_tag=dl.tag, sealed_size=dl.total)
            # Kept sealed or read once (get): past the page cache (LocalFileWriter, direct).
            writer = await LocalFileWriter(partial, append=bool(offset), direct=True).open()
            try:
                # The opener must see the blob from its first byte: the partial file's
                # bytes first, then the rest as it arrives (written on as it goes).
                opened = await open_into(
                    self._secret, blob_id,
                    _resumed(partial, offset, dl.chunks(), writer, flow), held,
                )
            finally:
                await writer.close()
        return await self._keep_partial(ns, blob_id, partial, writer.written, opened)

    async def _keep_partial(
        self, ns: str, blob_id: str, partial: Path, sealed_size: int, opened: Opened
    ) -> int | None:
        if sealed_size <= self.store.inline_max:
            data = await asyncio.to_thread(partial.read_bytes)
            kept = await self.store.attach_payload(
                ns, blob_id, size=opened.size, sealed_size=sealed_size,
                external=opened.external, payload=data,
            )
            partial.unlink(missing_ok=True)
        else:
            location = await self.store.keep_file(ns, blob_id, partial)
            try:
                kept = await self.store.attach_payload(
                    ns, blob_id, size=opened.size, sealed_size=sealed_size,
                    external=opened.external, location=location,
                )
            except BaseException:
                # No row claims the file: gone now, not at the next sweep (a full disk).
                self.store.blob_path(location).unlink(missing_ok=True)
                raise
            if not kept:
                self.store.blob_path(location).unlink(missing_ok=True)
        return sealed_size if kept else None

    async def _stream_download(self, run: _Run, rows: list[Row]) -> None:
        ns = run.namespace
        ids = [r.blob_id for r in rows]
        by_id = {r.blob_id: r for r in rows}
        settled: set[str] = set()  # verified, failed verification, or put back on purpose
        frames = _FrameReader(self, run, ids, settled)
        try:
            async with self.transport.stream_download(ns, ids) as body:
                async for chunk in body:
                    if await frames.feed(chunk):
                        break
                else:
                    await frames.feed(b"")
                    if not frames.ended:
                        raise StreamError("stream ended early")
        except TooLarge:
            # One of them is over what a stream frame can carry (4 GiB): each goes alone.
            for r in rows:
                await self._single_download_job(run, r)
        except MissingBlobs as exc:
            # Deleted since the listing: drop them; the rest are asked again at once.
            missing = [m for m in exc.missing if m in by_id]
            await self.store.remove_many(ns, missing)
            for m in missing:
                run.trackers["download"].dropped(m)
            if not missing:  # a 404 naming none of ours: do not loop on it
                await self._retry(run, rows, SyncStatus.PENDING_DOWNLOAD, exc)
        except (TransientError, StreamError, RemoteError) as exc:
            # A short or garbled stream, a drop, a 5xx: what did not arrive is retried.
            await frames.flush()  # what did arrive and verify is kept
            rest = [by_id[b] for b in ids if b not in settled]
            await self._retry(run, rest, SyncStatus.PENDING_DOWNLOAD, exc)
        finally:
            try:
                await frames.flush()
            finally:
                await frames.discard()  # a blob cut short leaves no temp file behind


class _FrameReader:
    """Consumes a download stream frame by frame, verifying and keeping each blob."""

    def __init__(self, engine: SyncEngine, run: _Run, ids: list[str], settled: set[str]) -> None:
        self.engine = engine
        self.store = engine.store
        self.run = run
        self.reader = DownstreamReader(ids)
        self.settled = settled
        self.ended = False
        self._blob: str | None = None
        self._opener: Opener | None = None
        self._bad = False
        self._buf: bytearray | None = None
        self._file: LocalFileWriter | None = None
        self._size = 0
        self._ready: list[Attach] = []
        self._ready_bytes = 0

    async def feed(self, chunk: bytes) -> bool:
        """Take a chunk (b"" at the end). True: stop reading, the rest is asked again."""
        self.reader.receive_data(chunk)
        try:
            while True:
                ev = self.reader.next_event()
                if ev is NEED_DATA:
                    return False
                if isinstance(ev, BlobStart):
                    if await self._start(ev):
                        return True
                elif isinstance(ev, BlobData):
                    await self._data(ev.data)
                elif isinstance(ev, BlobEnd):
                    await self._end()
                elif isinstance(ev, StreamEnd):
                    self.ended = True
                    return True
        except StreamError as exc:
            if self._blob is not None and isinstance(exc, FrameTagMismatch):
                # The frame header and the blob disagree: count it against the blob.
                await self.discard()
                self.settled.add(self._blob)
                await self.engine._verify_failed(self.run, self.run.namespace, self._blob)
            else:
                await self.discard()
            raise

    async def _start(self, ev: BlobStart) -> bool:
        assert ev.blob_id is not None
        engine = self.engine
        if ev.size > engine.stream_sealed_max:
            # Too large for a stream (SPEC 7): learn its size, fetch it alone next round.
            await self.store.update(self.run.namespace, ev.blob_id, sealed_size=ev.size)
            return True
        # No hanging up at stream_max_bytes: the server already sends the rest, and it
        # would have to send it again. Requests are sized instead (plan.take_batch).
        engine.sizes.learn(self.run.namespace, ev.size)
        self._blob = ev.blob_id
        self._size = ev.size
        self._bad = False
        if ev.size <= self.store.inline_max:
            # Held whole anyway: checked in one call at its end (check_sealed).
            self._opener, self._buf, self._file = None, bytearray(), None
        else:
            self._opener = Opener(engine._secret, ev.blob_id, keep=False)
            self._buf, self._file = None, await LocalFileWriter(self.store.temp_path()).open()
        return False

    async def _data(self, data: bytes) -> None:
        if self._bad:
            return
        if self._buf is not None:
            self._buf += data
            return
        try:
            # Only the tag matters here: the plaintext is dropped, the sealed bytes kept.
            self._opener.feed(data)  # type: ignore[union-attr]
        except InvalidBlob:
            self._bad = True
            return
        await self._file.write(data)  # type: ignore[union-attr]

    async def _end(self) -> None:
        blob_id = self._blob
        assert blob_id is not None
        opened: Opened | None = None
        if not self._bad:
            try:
                if self._buf is not None:
                    opened = check_sealed(self.engine._secret, blob_id, self._buf)
                else:
                    opened = self._opener.finish()  # type: ignore[union-attr]
            except InvalidBlob:
                opened = None
        self.settled.add(blob_id)
        if opened is None:
            await self.discard()
            await self.engine._verify_failed(self.run, self.run.namespace, blob_id)
        else:
            if self._buf is not None:
                item = Attach(blob_id, opened.size, self._size, opened.external,
                              payload=bytes(self._buf))
            else:
                assert self._file is not None
                await self._file.close()
                location = await self.store.keep_file(
                    self.run.namespace, blob_id, self._file.path
                )
                item = Attach(blob_id, opened.size, self._size, opened.external,
                              location=location)
            self._ready.append(item)
            self._ready_bytes += self._size
            if len(self._ready) >= FLUSH_COUNT or self._ready_bytes >= FLUSH_BYTES:
                await self.flush()
        self._blob, self._opener, self._buf, self._file = None, None, None, None

    async def flush(self) -> None:
        """Keep the verified blobs received so far, in one transaction."""
        ready, self._ready, self._ready_bytes = self._ready, [], 0
        if ready:
            await self._attach(ready)

    async def _attach(self, ready: list[Attach]) -> None:
        try:
            kept = await self.store.attach_many(self.run.namespace, ready)
        except NoSpace:
            if len(ready) > 1:
                # The disk is full: keep what fits, in smaller groups, so that a re-run
                # with a little room makes progress instead of failing whole groups.
                half = len(ready) // 2
                try:
                    await self._attach(ready[:half])
                except NoSpace:
                    self._unlink_files(ready[half:])
                    raise
                await self._attach(ready[half:])
                return
            self._unlink_files(ready)
            raise
        except BaseException:
            self._unlink_files(ready)
            raise
        for item, ok in zip(ready, kept, strict=True):
            if ok:
                await self.engine._downloaded(self.run, item.blob_id, item.sealed_size)
            elif item.location:  # deleted while on its way: do not bring it back
                self.store.blob_path(item.location).unlink(missing_ok=True)

    def _unlink_files(self, items: list[Attach]) -> None:
        """Payload files of blobs not kept: no row claims them, and they hold disk."""
        for item in items:
            if item.location:
                self.store.blob_path(item.location).unlink(missing_ok=True)

    async def discard(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file.path.unlink(missing_ok=True)
        self._buf, self._file = None, None


async def _kept_in(chunks: AsyncIterable[bytes], into: bytearray) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        into += chunk
        yield chunk


async def _resumed(
    partial: Path, offset: int, chunks: AsyncIterable[bytes], writer: LocalFileWriter,
    flow: Flow | None = None,
) -> AsyncIterator[bytes]:
    """The partial file's first ``offset`` bytes, then ``chunks`` appended to it (and
    counted into ``flow`` here: a generator layer more per piece would cost more)."""
    if offset:
        async for chunk in read_file(partial):
            yield chunk
    async for chunk in chunks:
        await writer.write(chunk)
        if flow is not None:
            flow.add(len(chunk))
        yield chunk


