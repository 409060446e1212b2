"""The sync engine (SPEC 7): reconcile with the server, then move what is pending.

A round downloads, then uploads, then deletes every blob whose next attempt has come,
highest priority first, with at most ``concurrency`` transfers at a time. A stream batch
is one transfer. Failures for a passing reason set the blob's next attempt on the 10..60 s
schedule (persisted in the local store); ``run`` sleeps until the earliest one and goes
again, until nothing is pending or ``max_sync_wait`` has passed.

Sizes of blobs on the server are unknown until their first byte arrives (listings carry
ids only). Unknown ones go into download streams, as many per request as
``stream_max_bytes`` allows at the average size learned so far (from the blobs of the
namespace in the store, then from every frame that arrives). A stream is always read to
its end: the server sends exactly what was asked, so hanging up at a byte limit would
only throw away what it already pushed into the socket, to be asked again. The one
exception is a frame announcing a blob larger than the stream threshold (SPEC 7: large
ones travel alone): the stream ends at its header, the size is recorded, the blob is
fetched alone (with Range resume) in the next round and the others are asked again at
once, without penalty.

The engine knows which uploads are on their way. A delete() meanwhile leaves the row
PENDING_DELETE and the upload sends the DELETE once it landed: a DELETE sent before would
find nothing, and the upload would then bring the blob back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blobsync.format import (
    SEAL_OVERHEAD,
    TAG_SIZE,
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
    AlreadyOnServer,
    AuthFailed,
    BlobNotFound,
    ClientError,
    IdTaken,
    MissingBlobs,
    NoSpace,
    RemoteError,
    StaleRange,
    TooLarge,
    TransientError,
)
from .localstore import Attach, FileWriter, LocalStore, Row, read_file
from .lock import NoLock, ProfileLock
from .model import Progress, ProgressCallback, SyncReport, SyncStatus
from .settings import ClientSettings
from .transport import Transport
from .verified import Provisional, open_into

log = logging.getLogger("blobsync.client.sync")

PHASES = ("download", "upload", "delete")
PHASE_STATUS = {
    "download": SyncStatus.PENDING_DOWNLOAD,
    "upload": SyncStatus.PENDING_UPLOAD,
    "delete": SyncStatus.PENDING_DELETE,
}

# Verified stream downloads are committed together, up to this many or this many bytes:
# one transaction per blob costs ~1 ms, which dominates for thousands of small blobs.
FLUSH_COUNT = 1000
FLUSH_BYTES = 8 << 20

# Sealed size assumed for a blob when nothing is known yet about the namespace (and at
# most half of stream_max_bytes, so that a first stream asks for two blobs at least). It
# sizes only the first download streams; a wrong guess costs no bytes, since streams are
# read to the end, just a stream longer or shorter than stream_max_bytes.
FIRST_SIZE_GUESS = 64 << 10

class _Tracker:
    """Progress of one phase across rounds."""

    def __init__(self, phase: str, callback: ProgressCallback | None) -> None:
        self.phase = phase
        self.callback = callback
        self.seen: set[str] = set()
        self.done = 0
        self.bytes_done = 0
        self.bytes_total = 0
        self._sized: set[str] = set()

    def add(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self.seen.add(r.blob_id)
            self.size(r.blob_id, r.sealed_size)
        self.report()

    def size(self, blob_id: str, sealed_size: int | None) -> None:
        if sealed_size is not None and blob_id not in self._sized:
            self._sized.add(blob_id)
            self.bytes_total += sealed_size

    def finished(self, blob_id: str, sealed_size: int | None) -> None:
        self.size(blob_id, sealed_size)
        self.done += 1
        self.bytes_done += sealed_size or 0
        self.report()

    def dropped(self, blob_id: str) -> None:
        """A blob that left this phase without a transfer (vanished, gave up)."""
        self.seen.discard(blob_id)
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            self.callback(
                Progress(self.phase, self.done, len(self.seen), self.bytes_done, self.bytes_total)
            )


class _KeyLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass
class _Run:
    namespace: str
    report: SyncReport
    trackers: dict[str, _Tracker] = field(default_factory=dict)


class SyncEngine:
    def __init__(
        self, store: LocalStore, transport: Transport, secret: bytes, settings: ClientSettings
    ) -> None:
        self.store = store
        self.transport = transport
        self.settings = settings
        self._secret = secret
        self._locks: dict[tuple[str, str], _KeyLock] = {}
        self._uploading: dict[tuple[str, str], int] = {}  # uploads in flight, per blob
        # Per namespace: (bytes, count) of the stream-sized blobs seen, to size requests.
        self._sizes: dict[str, tuple[int, int]] = {}
        # The profile's writer lock (BlobManager sets it): held per round, never while
        # waiting for a retry, so that other processes get in between rounds.
        self.lock: ProfileLock | NoLock = NoLock()

    @property
    def stream_sealed_max(self) -> int:
        """Largest sealed size that travels in a stream."""
        return self.settings.stream_threshold + SEAL_OVERHEAD

    def _small(self, row: Row) -> bool:
        return row.sealed_size is None or row.sealed_size <= self.stream_sealed_max

    # --- reconcile -----------------------------------------------------------------------

    async def reconcile(self, namespace: str, report: SyncReport) -> None:
        """Apply the server's deletions, and mark what is missing on either side."""
        # The store's query runs on its thread (SQLite lets go of the GIL) while the
        # listings travel. They go one after the other: one connection, as for any
        # request outside the ``concurrency`` transfers.
        async def listings() -> tuple[list[str], list[str]]:
            return (await self.transport.list_blobs(namespace),
                    await self.transport.list_blobs(namespace, deleted=True))

        (listed, tombstoned), (known, unsynced) = await _gather(
            listings(), self.store.statuses(namespace)
        )
        remote, tombs = set(listed), set(tombstoned)
        gone_here: list[str] = []  # deleted on the server: remove locally
        vanished: list[str] = []  # we waited for them, they are gone: forget them
        reupload: list[str] = []
        # Set operations on ids, no per-blob Python work for what did not change: a no-op
        # sync of 100,000 blobs must stay well under a second.
        synced = SyncStatus.SYNCED.value
        waiting = (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value)
        pending_delete = SyncStatus.PENDING_DELETE.value
        for b in sorted(known - remote):
            st = unsynced.get(b, synced)
            if st == synced:
                # Tombstoned: another device deleted it. Not tombstoned: the server lost
                # it (restored from backup, say), so it goes up again.
                (gone_here if b in tombs else reupload).append(b)
            elif st in waiting:
                (gone_here if b in tombs else vanished).append(b)
            elif st == pending_delete:
                # Nothing left to delete on the server, unless an upload of it is still
                # on its way: that upload deletes it once it landed.
                if not self.uploading(namespace, b):
                    vanished.append(b)
        # Sending a large blob only to hear 409 wastes its whole size; small ones go
        # anyway, the stream answers "existing" for the price of a header.
        large = await self.store.ids_larger(
            namespace, SyncStatus.PENDING_UPLOAD, self.stream_sealed_max
        )
        already = sorted(large & remote)
        if gone_here:
            report.deleted_local += len(await self.store.remove_many(namespace, gone_here))
        if vanished:
            await self.store.remove_many(namespace, vanished)
        if reupload:
            await self.store.set_many(
                namespace, reupload, [SyncStatus.SYNCED],
                status=SyncStatus.PENDING_UPLOAD, retries=0, next_attempt=0,
            )
        if already:
            # The same sealed blob (an upload that went through unseen) or another one
            # under the same id (SPEC 7): the tags tell, for 16 bytes each.
            rows = await self.store.get_many(namespace, already)
            same = await self._settle_existing(
                namespace, report, [rows[b] for b in already if b in rows], None
            )
            await self.store.set_many(
                namespace, [r.blob_id for r in same], [SyncStatus.PENDING_UPLOAD],
                status=SyncStatus.SYNCED, retries=0, next_attempt=0,
            )
        new = remote - known - tombs
        if new:
            await self.store.add_pending_downloads(namespace, sorted(new))

    # --- the loop ------------------------------------------------------------------------

    async def run(
        self,
        namespace: str,
        phases: Iterable[str] = PHASES,
        *,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
        waited: float = 0.0,
    ) -> SyncReport:
        """Rounds until nothing is due; ``waited``: seconds of ``max_sync_wait`` spent
        already (retrying the listing)."""
        run = _Run(namespace, report or SyncReport())
        phases = [p for p in PHASES if p in set(phases)]
        for p in phases:
            run.trackers[p] = _Tracker(p, progress)
        wait_budget = self.settings.max_sync_wait
        while True:
            worked = False
            async with self.lock.hold("sync"):
                for phase in phases:
                    rows = await self.store.due(namespace, PHASE_STATUS[phase], time.time())
                    if rows:
                        worked = True
                        run.trackers[phase].add(rows)
                        await getattr(self, f"_{phase}_round")(run, rows)
            if worked:
                continue
            wake = await self.store.next_wake(namespace, [PHASE_STATUS[p] for p in phases])
            if wake is None:
                break
            pause = max(0.0, wake - time.time())
            if wait_budget is not None and waited + pause > wait_budget:
                rows = await self.store.rows(namespace, [PHASE_STATUS[p] for p in phases])
                run.report.pending = [r.blob_id for r in rows]
                break
            waited += pause
            log.info("waiting %.1f s before retrying", pause)
            await asyncio.sleep(pause)
        return run.report

    async def _pool(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        """Run jobs in order with at most ``concurrency`` at once."""
        queue = deque(jobs)

        async def worker() -> None:
            while queue:
                await queue.popleft()()

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(self.settings.concurrency, len(jobs))):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            # One error out, not a group: AuthFailed and bugs stop the sync as themselves.
            raise eg.exceptions[0] from None

    def _batches(self, rows: list[Row]) -> list[list[Row]]:
        """Rows (already highest priority first) cut into stream batches by count and bytes."""
        out: list[list[Row]] = []
        cur: list[Row] = []
        size = 0
        for r in rows:
            s = r.sealed_size or 0
            if cur and (
                len(cur) >= self.settings.stream_max_count
                or size + s > self.settings.stream_max_bytes
            ):
                out.append(cur)
                cur, size = [], 0
            cur.append(r)
            size += s
        if cur:
            out.append(cur)
        return out

    def _jobs(
        self,
        rows: list[Row],
        batch: Callable[[list[Row]], Awaitable[None]],
        single: Callable[[Row], Awaitable[None]],
    ) -> list[Callable[[], Awaitable[None]]]:
        if self.settings.stream:
            small = [r for r in rows if self._small(r)]
            large = [r for r in rows if not self._small(r)]
        else:
            small, large = [], rows
        keyed: list[tuple[int, int, Callable[[], Awaitable[None]]]] = []
        for b in self._batches(small):
            keyed.append((-max(r.priority for r in b), b[0].id, _bind(batch, b)))
        for r in large:
            keyed.append((-r.priority, r.id, _bind(single, r)))
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [job for _, _, job in keyed]

    async def _retry(
        self, run: _Run, rows: Iterable[Row], status: SyncStatus, exc: BaseException
    ) -> None:
        ids = [r.blob_id for r in rows]
        if ids:
            log.info("%d blob(s) will be retried: %s", len(ids), exc)
            await self.store.schedule_retry(
                run.namespace, ids, status, delay=self.settings.retry_delay
            )

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

    # --- downloads -----------------------------------------------------------------------

    async def _download_round(self, run: _Run, rows: list[Row]) -> None:
        if not self.settings.stream:
            await self._pool([_bind(lambda r: self._single_download_job(run, r), r)
                              for r in rows])
            return
        await self._seed_sizes(run.namespace)
        small = deque(r for r in rows if self._small(r))
        large = deque(r for r in rows if not self._small(r))

        def next_job() -> Callable[[], Awaitable[None]] | None:
            # Highest priority first between the heads of both queues (each is in order).
            if large and not (small and _rank(small[0]) < _rank(large[0])):
                return _bind(lambda r: self._single_download_job(run, r), large.popleft())
            if small:
                # Cut when a worker takes it, not beforehand: the size estimate improves
                # with every stream that came in meanwhile.
                return _bind(lambda b: self._stream_download(run, b), self._take_batch(small))
            return None

        await self._pool_pulling(next_job)

    async def _pool_pulling(self, next_job: Callable[[], Callable[[], Awaitable[None]] | None]
                            ) -> None:
        """Like ``_pool``, but each worker asks ``next_job`` for its next job when free."""

        async def worker() -> None:
            while (job := next_job()) is not None:
                await job()

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.settings.concurrency):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    def _take_batch(self, queue: deque[Row]) -> list[Row]:
        """The next download stream from the front of ``queue``: blobs of unknown size
        count at the average learned so far."""
        guess = self.size_estimate(queue[0].namespace)
        batch: list[Row] = []
        size = 0
        while queue and len(batch) < self.settings.stream_max_count:
            s = queue[0].sealed_size or guess
            if batch and size + s > self.settings.stream_max_bytes:
                break
            batch.append(queue.popleft())
            size += s
        return batch

    async def _seed_sizes(self, namespace: str) -> None:
        if namespace not in self._sizes:
            self._sizes[namespace] = await self.store.size_stats(
                namespace, self.stream_sealed_max
            )

    def size_estimate(self, namespace: str) -> int:
        """Average sealed size of the stream-sized blobs of ``namespace`` seen so far."""
        total, n = self._sizes.get(namespace, (0, 0))
        if n:
            return max(1, total // n)
        return max(1, min(FIRST_SIZE_GUESS, self.settings.stream_max_bytes // 2))

    def learn_size(self, namespace: str, sealed_size: int) -> None:
        if sealed_size <= self.stream_sealed_max:
            total, n = self._sizes.get(namespace, (0, 0))
            self._sizes[namespace] = (total + sealed_size, n + 1)

    async def _downloaded(self, run: _Run, blob_id: str, sealed_size: int) -> None:
        run.report.downloaded += 1
        run.trackers["download"].finished(blob_id, sealed_size)

    async def _single_download_job(self, run: _Run, row: Row) -> None:
        try:
            sealed = await self.download(row)
        except InvalidBlob:
            await self._verify_failed(run, row.namespace, row.blob_id)
        except BlobNotFound:
            await self.store.remove(row.namespace, row.blob_id)
            run.trackers["download"].dropped(row.blob_id)
        except (TransientError, RemoteError) as exc:
            await self._retry(run, [row], SyncStatus.PENDING_DOWNLOAD, exc)
        else:
            if sealed is not None:
                await self._downloaded(run, row.blob_id, sealed)

    async def download(self, row: Row, held: Provisional | None = None) -> int | None:
        """Fetch one blob alone, resuming a partial download with Range, verify and keep it.

        ``held`` receives the plaintext as it is decrypted, releasable only once the blob
        verified (verified.py). Returns the sealed size, or None when the row no longer
        wanted the payload. Raises InvalidBlob (partial discarded), TransientError
        (partial kept), BlobNotFound.
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
                return await self._download(fresh, held)
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    async def _download(self, row: Row, held: Provisional | None) -> int | None:
        ns, blob_id = row.namespace, row.blob_id
        partial = self.store.partial_path(ns, blob_id)
        offset = partial.stat().st_size if partial.exists() and row.partial_tag else 0
        for _ in range(2):
            try:
                return await self._fetch(row, partial, offset, held)
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
        self, row: Row, partial: Path, offset: int, held: Provisional | None
    ) -> int | None:
        ns, blob_id = row.namespace, row.blob_id
        async with self.transport.get_blob(ns, blob_id, offset=offset) as dl:
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
            writer = await FileWriter(partial, append=bool(offset)).open()
            try:
                # The opener must see the blob from its first byte: the partial file's
                # bytes first, then the rest as it arrives (written on as it goes).
                opened = await open_into(
                    self._secret, blob_id, _resumed(partial, offset, dl.chunks(), writer), held
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

    # --- uploads -------------------------------------------------------------------------

    async def _upload_round(self, run: _Run, rows: list[Row]) -> None:
        await self._pool(self._jobs(
            rows,
            lambda b: self._stream_upload(run, [r.blob_id for r in b]),
            lambda r: self._single_upload_job(run, r),
        ))

    async def _uploaded(self, run: _Run, rows: Iterable[Row]) -> None:
        rows = list(rows)
        n = await self.store.set_many(
            run.namespace, [r.blob_id for r in rows], [SyncStatus.PENDING_UPLOAD],
            status=SyncStatus.SYNCED, retries=0, next_attempt=0,
        )
        run.report.uploaded += n
        for r in rows:
            run.trackers["upload"].finished(r.blob_id, r.sealed_size)

    async def _single_upload_job(self, run: _Run, row: Row) -> None:
        try:
            await self.upload(row)
        except TransientError as exc:
            await self._retry(run, [row], SyncStatus.PENDING_UPLOAD, exc)
        except AuthFailed:
            raise
        except ClientError as exc:
            log.warning("upload of %s failed: %s", row.blob_id, exc)
            if isinstance(exc, IdTaken):
                run.report.taken.append(row.blob_id)
            await self.store.update(
                run.namespace, row.blob_id, only_if=[SyncStatus.PENDING_UPLOAD],
                status=SyncStatus.FAILED_UPLOAD,
            )
            run.report.failed.append(row.blob_id)
            run.trackers["upload"].dropped(row.blob_id)
        else:
            await self._uploaded(run, [row])

    def uploading(self, namespace: str, blob_id: str) -> bool:
        """Whether an upload of this blob is on its way right now."""
        return (namespace, blob_id) in self._uploading

    def _flight(self, namespace: str, blob_ids: Iterable[str], step: int) -> None:
        for b in blob_ids:
            key = (namespace, b)
            n = self._uploading.get(key, 0) + step
            if n:
                self._uploading[key] = n
            else:
                self._uploading.pop(key, None)

    async def upload(self, row: Row, sealed: bytes | None = None) -> None:
        """PUT one blob as its sealed bytes lie in the store, or from ``sealed`` (its
        bytes the caller just sealed: not read back). A 409 counts as done.

        A row that is no longer PENDING_UPLOAD when its turn comes (deleted meanwhile) is
        not sent; one deleted while it was on its way is deleted on the server once it
        landed (``delete()`` leaves that to us).
        """
        ns = row.namespace
        self._flight(ns, [row.blob_id], +1)
        try:
            fresh = await self.store.get(ns, row.blob_id)
            if fresh is None or fresh.status is not SyncStatus.PENDING_UPLOAD:
                return
            assert fresh.sealed_size is not None
            self._check_payload(fresh)
            body = self.store.read_sealed(fresh) if sealed is None else sealed
            try:
                await self.transport.put_blob(ns, fresh.blob_id, body, fresh.sealed_size)
            except AlreadyOnServer:
                if not await self.same_on_server(fresh):
                    raise _id_taken(fresh.blob_id) from None
                log.info("blob %s was already on the server", fresh.blob_id)
        finally:
            self._flight(ns, [row.blob_id], -1)
        await self._settle_deleted(ns, [row.blob_id])

    async def same_on_server(self, row: Row) -> bool:
        """Whether the server holds this very sealed blob under the row's id (SPEC 7, on a
        409): its last 16 bytes, the tag, against the local copy's. TransientError when
        it left the server meanwhile: the upload is tried again."""
        theirs = await self.transport.blob_tail(row.namespace, row.blob_id)
        if theirs is None:
            raise TransientError(f"blob {row.blob_id} left the server while being compared")
        return theirs == await self.store.tail(row, TAG_SIZE)

    async def _settle_existing(
        self, namespace: str, report: SyncReport, rows: list[Row], run: _Run | None
    ) -> list[Row]:
        """Rows whose id the server already holds: returns those that are the same blob
        (done); another blob under the id turns FAILED_UPLOAD and is reported taken; a
        comparison that failed for a passing reason leaves the row pending, retried."""
        same: list[Row] = []
        for r in rows:
            try:
                if await self.same_on_server(r):
                    same.append(r)
                    continue
            except TransientError as exc:
                log.info("blob %s will be retried: %s", r.blob_id, exc)
                await self.store.schedule_retry(
                    namespace, [r.blob_id], SyncStatus.PENDING_UPLOAD,
                    delay=self.settings.retry_delay,
                )
                continue
            except ClientError as exc:  # the local copy is unreadable: not the same
                log.warning("blob %s cannot be compared: %s", r.blob_id, exc)
                await self._upload_failed(namespace, report, r, run)
                continue
            log.warning("%s", _id_taken(r.blob_id))
            report.taken.append(r.blob_id)
            await self._upload_failed(namespace, report, r, run)
        return same

    async def _upload_failed(
        self, namespace: str, report: SyncReport, row: Row, run: _Run | None
    ) -> None:
        if await self.store.update(
            namespace, row.blob_id, only_if=[SyncStatus.PENDING_UPLOAD],
            status=SyncStatus.FAILED_UPLOAD,
        ):
            report.failed.append(row.blob_id)
        if run is not None:
            run.trackers["upload"].dropped(row.blob_id)

    async def not_ours_to_delete(self, namespace: str, blob_id: str) -> bool:
        """For a PENDING_DELETE row of a blob never confirmed on the server (it remembers
        the blob's tag): whether the server holds another blob under the id, or none. Then
        the row is forgotten here and no DELETE may go: it would remove another device's
        blob (SPEC 7). Every DELETE of a row goes through this. TransientError passes."""
        row = await self.store.get(namespace, blob_id)
        if row is None or row.status is not SyncStatus.PENDING_DELETE or row.partial_tag is None:
            return False
        if await self.transport.blob_tail(namespace, blob_id) == row.partial_tag:
            return False
        log.info("blob %s is not on the server as this device sealed it: forgotten here only",
                 blob_id)
        await self.store.remove_many(namespace, [blob_id], only_if=[SyncStatus.PENDING_DELETE])
        return True

    async def _settle_deleted(self, namespace: str, blob_ids: list[str]) -> None:
        """Delete on the server the blobs that were deleted here while being uploaded."""
        for b in await self.store.with_status(namespace, blob_ids, SyncStatus.PENDING_DELETE):
            if self.uploading(namespace, b):
                continue
            try:
                if await self.not_ours_to_delete(namespace, b):
                    continue
                await self.transport.delete_blob(namespace, b)
            except BlobNotFound:
                pass
            except (TransientError, RemoteError) as exc:
                log.info("delete of %s postponed: %s", b, exc)
                await self.store.schedule_retry(
                    namespace, [b], SyncStatus.PENDING_DELETE, delay=self.settings.retry_delay
                )
                continue
            await self.store.remove_many(namespace, [b], only_if=[SyncStatus.PENDING_DELETE])

    def _check_payload(self, row: Row) -> None:
        """Check a payload file before sending it: a body that broke off midway would look
        like a dropped connection and be retried forever."""
        if row.location:
            try:
                actual = self.store.blob_path(row.location).stat().st_size
            except FileNotFoundError:
                raise ClientError(f"local payload of {row.blob_id} is missing") from None
            if actual != row.sealed_size:
                raise ClientError(f"local payload of {row.blob_id} has the wrong size")

    def upload_run(
        self, namespace: str, report: SyncReport, progress: ProgressCallback | None = None
    ) -> _Run:
        """A run for ``upload_sealed``: one report and one progress bar over many calls."""
        run = _Run(namespace, report)
        run.trackers["upload"] = _Tracker("upload", progress)
        return run

    async def upload_sealed(self, run: _Run, sealed: dict[str, bytes]) -> None:
        """Upload blobs just stored here, from the sealed bytes the caller still holds
        (``put_many`` uploading as it stores): the store is not read back. The stream
        limits of the settings hold as in a sync round; blobs that are not PENDING_UPLOAD
        by now are skipped; failures leave blobs pending or failed as a round would."""
        await self._stream_upload(run, list(sealed), sealed)

    async def _stream_upload(
        self, run: _Run, ids: list[str], sealed: dict[str, bytes] | None = None
    ) -> None:
        """Upload ``ids`` in streams within the limits, any too large for one alone. With
        ``sealed`` (upload_sealed), their bytes come from it and they are new to the run's
        progress; a round's batches are within the limits and its progress has them."""
        ns = run.namespace
        self._flight(ns, ids, +1)
        try:
            # As they are now: a row deleted since the round began is not sent.
            fresh = await self.store.get_many(ns, ids)
            rows = [fresh[b] for b in ids
                    if b in fresh and fresh[b].status is SyncStatus.PENDING_UPLOAD]
            if sealed is not None:
                run.trackers["upload"].add(rows)
            streamed = self.settings.stream
            for batch in self._batches([r for r in rows if streamed and self._small(r)]):
                await self._stream_upload_rows(run, batch, sealed)
            for r in rows:
                if not (streamed and self._small(r)):
                    await self._single_upload_job(run, r)
        finally:
            self._flight(ns, ids, -1)
        await self._settle_deleted(ns, ids)

    async def _stream_upload_rows(
        self, run: _Run, rows: list[Row], sealed: dict[str, bytes] | None = None
    ) -> None:
        damaged = []
        for r in rows:
            try:
                self._check_payload(r)
            except ClientError:
                damaged.append(r)
        for r in damaged:  # each fails on its own, with its reason logged
            await self._single_upload_job(run, r)
        rows = [r for r in rows if r not in damaged]
        if not rows:
            return
        if len(rows) == 1:
            await self._single_upload_job(run, rows[0])
            return
        items = [(r.blob_id, r.sealed_size or 0) for r in rows]

        payloads = (
            self.store.read_sealed_many(rows) if sealed is None
            else _in_memory([sealed[r.blob_id] for r in rows])
        )
        try:
            stored, existing = await self.transport.stream_upload(run.namespace, items, payloads)
        except TransientError as exc:
            await self._retry(run, rows, SyncStatus.PENDING_UPLOAD, exc)
            return
        except (RemoteError, ClientError) as exc:
            if isinstance(exc, AuthFailed):
                raise
            # 400, 413, 507 name one culprit at best: what the server says it kept is
            # done, the rest go one by one so that each blob gets its own answer.
            log.info("stream upload refused (%s); sending one by one", exc)
            detail = exc.detail if isinstance(exc, RemoteError) else {}
            kept = set(_str_list(detail.get("stored")))
            there = set(_str_list(detail.get("existing"))) - kept
            await self._uploaded(run, [r for r in rows if r.blob_id in kept])
            await self._uploaded(run, await self._settle_existing(
                run.namespace, run.report, [r for r in rows if r.blob_id in there], run
            ))
            for r in rows:
                if r.blob_id not in kept | there:
                    await self._single_upload_job(run, r)
            return
        ok = set(stored) | set(existing)
        await self._uploaded(run, [r for r in rows if r.blob_id in set(stored)])
        # The server had these ids already: the same blob, or another one (SPEC 7).
        await self._uploaded(run, await self._settle_existing(
            run.namespace, run.report,
            [r for r in rows if r.blob_id in set(existing) - set(stored)], run,
        ))
        lost = [r for r in rows if r.blob_id not in ok]
        if lost:
            await self._retry(
                run, lost, SyncStatus.PENDING_UPLOAD, ClientError("not acknowledged by server")
            )

    # --- deletes -------------------------------------------------------------------------

    async def _delete_round(self, run: _Run, rows: list[Row]) -> None:
        await self._pool([_bind(lambda r: self._delete_job(run, r), r) for r in rows])

    async def _delete_job(self, run: _Run, row: Row) -> None:
        if self.uploading(run.namespace, row.blob_id):
            # Its upload is still on its way and deletes it once it landed; look again
            # later rather than spin on it.
            await self._retry(run, [row], SyncStatus.PENDING_DELETE,
                              ClientError("its upload is still on its way"))
            return
        try:
            if await self.not_ours_to_delete(run.namespace, row.blob_id):
                run.trackers["delete"].finished(row.blob_id, None)
                return
            await self.transport.delete_blob(run.namespace, row.blob_id)
        except BlobNotFound:
            pass  # already gone: what we wanted
        except (TransientError, RemoteError) as exc:
            await self._retry(run, [row], SyncStatus.PENDING_DELETE, exc)
            return
        removed = await self.store.remove_many(
            run.namespace, [row.blob_id], only_if=[SyncStatus.PENDING_DELETE]
        )
        run.report.deleted_remote += len(removed)
        run.trackers["delete"].finished(row.blob_id, None)


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
        self._file: FileWriter | None = None
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
        # would have to send it again. Requests are sized instead (``_take_batch``).
        engine.learn_size(self.run.namespace, ev.size)
        self._blob = ev.blob_id
        self._size = ev.size
        self._bad = False
        if ev.size <= self.store.inline_max:
            # Held whole anyway: checked in one call at its end (check_sealed).
            self._opener, self._buf, self._file = None, bytearray(), None
        else:
            self._opener = Opener(engine._secret, ev.blob_id)
            self._buf, self._file = None, await FileWriter(self.store.temp_path()).open()
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


async def _gather(*aws: Awaitable[Any]) -> list[Any]:
    """Await concurrently; on a failure cancel the rest and raise that one error (not a
    group: AuthFailed and the transient errors must stay themselves)."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a) for a in aws]  # type: ignore[arg-type]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


async def _kept_in(chunks: AsyncIterable[bytes], into: bytearray) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        into += chunk
        yield chunk


async def _resumed(
    partial: Path, offset: int, chunks: AsyncIterable[bytes], writer: FileWriter
) -> AsyncIterator[bytes]:
    """The partial file's first ``offset`` bytes, then ``chunks`` appended to it."""
    if offset:
        async for chunk in read_file(partial):
            yield chunk
    async for chunk in chunks:
        await writer.write(chunk)
        yield chunk


def _id_taken(blob_id: str) -> IdTaken:
    return IdTaken(f"id {blob_id} is taken by another blob on the server")


def _str_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _rank(row: Row) -> tuple[int, int]:
    """Sort key: highest priority first, then oldest."""
    return (-row.priority, row.id)


def _bind(fn, arg):  # type: ignore[no-untyped-def]
    """A job closure with ``arg`` fixed now, not when the loop variable last changed."""
    return lambda: fn(arg)


async def _in_memory(payloads: list[bytes]) -> AsyncIterator[bytes]:
    for data in payloads:
        yield data
