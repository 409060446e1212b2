"""The sync engine (SPEC 7): reconcile with the server, then move what is pending.

A round downloads, then uploads, then deletes every blob whose next attempt has come,
highest priority first, with at most ``concurrency`` transfers at a time (jobs.run_jobs).
A stream batch is one transfer. Failures for a passing reason set the blob's next attempt
on the 10..60 s schedule (persisted in the local store); ``run`` sleeps until the
earliest one and goes again, until nothing is pending or ``max_sync_wait`` has passed.

What to do is decided by the pure planner (plan.py: reconcile's decisions, batching,
size estimates); how a blob travels is in download.py and upload.py, the two halves of
``SyncEngine``; this module orchestrates them, and sends the deletes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from blobsync.format import SEAL_OVERHEAD

from .download import Downloads, _KeyLock
from .errors import BlobNotFound, ClientError, RemoteError, TransientError
from .jobs import bind, gather, run_jobs
from .localstore import LocalStore, Row
from .lock import NoLock, ProfileLock
from .metas import MetaSync, listing_meta
from .model import ProgressCallback, SyncReport, SyncStatus
from .plan import SizeBook, is_small
from .plan import reconcile as plan_reconcile
from .settings import ClientSettings
from .tracking import Tracker as _Tracker
from .transport import Transport
from .upload import Uploads

log = logging.getLogger("blobsync.client.sync")

PHASES = ("download", "upload", "delete")
PHASE_STATUS = {
    "download": SyncStatus.PENDING_DOWNLOAD,
    "upload": SyncStatus.PENDING_UPLOAD,
    "delete": SyncStatus.PENDING_DELETE,
}

@dataclass
class _Run:
    namespace: str
    report: SyncReport
    trackers: dict[str, _Tracker] = field(default_factory=dict)


class SyncEngine(Downloads, Uploads, MetaSync):
    def __init__(
        self, store: LocalStore, transport: Transport, secret: bytes, settings: ClientSettings
    ) -> None:
        self.store = store
        self.transport = transport
        self.settings = settings
        self._secret = secret
        self._locks: dict[tuple[str, str], _KeyLock] = {}
        self._uploading: dict[tuple[str, str], int] = {}  # uploads in flight, per blob
        # Per namespace: the average size of stream-sized blobs, to size requests.
        self.sizes = SizeBook(self.stream_sealed_max, settings.stream_max_bytes)
        # The profile's writer lock (BlobManager sets it): held per round, never while
        # waiting for a retry, so that other processes get in between rounds.
        self.lock: ProfileLock | NoLock = NoLock()

    @property
    def stream_sealed_max(self) -> int:
        """Largest sealed size that travels in a stream."""
        return self.settings.stream_threshold + SEAL_OVERHEAD

    def _small(self, row: Row) -> bool:
        return is_small(row, self.stream_sealed_max)

    # --- reconcile -----------------------------------------------------------------------

    async def reconcile(self, namespace: str, report: SyncReport) -> str | None:
        """Apply the server's deletions, and mark what is missing on either side. Returns
        the listing's ``Changes-Cursor`` (SPEC 8), None from a server without a feed."""
        # The store's query runs on its thread (SQLite lets go of the GIL) while the
        # listings travel. They go one after the other: one connection, as for any
        # request outside the ``concurrency`` transfers. The cursor is the first
        # listing's: every change after what it shows lies after that cursor.
        # With the metas (SPEC 11), which the new rows keep.
        metas: dict[str, str] = {}

        async def listings() -> tuple[list[str], str | None, list[str]]:
            nonlocal metas
            listed, metas, cursor = await listing_meta(self.transport, namespace)
            return listed, cursor, await self.transport.list_blobs(namespace, deleted=True)

        (listed, cursor, tombstoned), (known, unsynced) = await gather(
            listings(), self.store.statuses(namespace)
        )
        large = await self.store.ids_larger(
            namespace, SyncStatus.PENDING_UPLOAD, self.stream_sealed_max
        )
        plan = plan_reconcile(
            known, unsynced, listed, tombstoned,
            uploading={b for ns, b in self._uploading if ns == namespace},
            large_pending_upload=large,
        )
        if plan.gone_here:
            report.deleted_local += len(await self.store.remove_many(namespace, plan.gone_here))
        if plan.vanished:
            await self.store.remove_many(namespace, plan.vanished)
        if plan.reupload:
            await self.store.set_many(
                namespace, plan.reupload, [SyncStatus.SYNCED],
                status=SyncStatus.PENDING_UPLOAD, retries=0, next_attempt=0,
            )
        if plan.already:
            # The same sealed blob (an upload that went through unseen) or another one
            # under the same id (SPEC 7): the tags tell, for 16 bytes each.
            rows = await self.store.get_many(namespace, plan.already)
            same = await self._settle_existing(
                namespace, report, [rows[b] for b in plan.already if b in rows], None
            )
            await self.store.set_many(
                namespace, [r.blob_id for r in same], [SyncStatus.PENDING_UPLOAD],
                status=SyncStatus.SYNCED, retries=0, next_attempt=0,
            )
        if plan.new:
            await self.add_named_downloads(namespace, plan.new, metas)
        return cursor

    # --- the loop ------------------------------------------------------------------------

    async def run(
        self,
        namespace: str,
        phases: Iterable[str] = PHASES,
        *,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
        waited: float = 0.0,
        wait: bool = True,
    ) -> SyncReport:
        """Rounds until nothing is due; ``waited``: seconds of ``max_sync_wait`` spent
        already (retrying the listing). Without ``wait``, stop at the first pause for a
        retry instead of sleeping through it (a watcher comes back by itself)."""
        run = _Run(namespace, report or SyncReport())
        phases = [p for p in PHASES if p in set(phases)]
        for p in phases:
            run.trackers[p] = _Tracker(p, progress)
            if progress is not None:
                # The whole plan up front (not grown round by round): every blob the phase
                # will move, with the sizes known here (a new download's comes with it).
                run.trackers[p].plan(*await self.store.planned(namespace, PHASE_STATUS[p]))
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
            if wake is None or not wait:
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

    async def _retry(
        self, run: _Run, rows: Iterable[Row], status: SyncStatus, exc: BaseException
    ) -> None:
        ids = [r.blob_id for r in rows]
        if ids:
            log.info("%d blob(s) will be retried: %s", len(ids), exc)
            await self.store.schedule_retry(
                run.namespace, ids, status, delay=self.settings.retry_delay
            )

    def upload_run(
        self, namespace: str, report: SyncReport, progress: ProgressCallback | None = None
    ) -> _Run:
        """A run for ``upload_sealed``: one report and one progress bar over many calls."""
        run = _Run(namespace, report)
        run.trackers["upload"] = _Tracker("upload", progress)
        return run

    # --- deletes -------------------------------------------------------------------------

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

    async def _delete_round(self, run: _Run, rows: list[Row]) -> None:
        await run_jobs([bind(lambda r: self._delete_job(run, r), r) for r in rows],
                       self.settings.concurrency)

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


