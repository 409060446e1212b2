"""Uploads of the sync engine: one blob alone by PUT, small ones many per stream.

The engine knows which uploads are on their way (``uploading``). A delete() meanwhile
leaves the row PENDING_DELETE and the upload sends the DELETE once it landed: a DELETE
sent before would find nothing, and the upload would then bring the blob back. An id the
server already holds is the same blob (an upload that went through unseen) or another
one (SPEC 7): the tags tell, for 16 bytes each.

``Uploads`` is a part of ``SyncEngine`` (sync.py), which orchestrates the rounds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from blobsync.format import TAG_SIZE

from .errors import (
    AlreadyOnServer,
    AuthFailed,
    ClientError,
    IdTaken,
    RemoteError,
    TransientError,
)
from .jobs import bind, run_jobs
from .localstore import LocalStore, Row
from .model import SyncReport, SyncStatus
from .plan import batches, order_uploads
from .settings import ClientSettings
from .tracking import Flow, counted
from .transport import Transport

if TYPE_CHECKING:
    from .sync import _Run

log = logging.getLogger("blobsync.client.sync")


class Uploads:
    """The upload half of ``SyncEngine`` (a mixin: the engine holds the state)."""

    store: LocalStore
    transport: Transport
    settings: ClientSettings
    _uploading: dict[tuple[str, str], int]  # uploads in flight, per blob
    metas_to_send: Callable[[str, list[str]], Awaitable[dict[str, str]]]  # metas.MetaSync

    # --- uploads -------------------------------------------------------------------------

    async def _upload_round(self, run: _Run, rows: list[Row]) -> None:
        s = self.settings
        planned = order_uploads(
            rows, stream=s.stream, stream_sealed_max=self.stream_sealed_max,
            max_count=s.stream_max_count, max_bytes=s.stream_max_bytes,
        )
        await run_jobs([
            bind(lambda b: self._stream_upload(run, [r.blob_id for r in b]), item)
            if isinstance(item, list) else bind(lambda r: self._single_upload_job(run, r), item)
            for item in planned
        ], s.concurrency)

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
        tracker = run.trackers["upload"]
        try:
            await self.upload(row, flow=tracker.flow(row.blob_id))
        except TransientError as exc:
            tracker.stopped(row.blob_id)
            await self._retry(run, [row], SyncStatus.PENDING_UPLOAD, exc)
        except AuthFailed:
            raise
        except ClientError as exc:
            log.warning("upload of %s failed: %s", row.blob_id, exc)
            if isinstance(exc, IdTaken):
                run.report.taken.append(row.blob_id)
            elif isinstance(exc, RemoteError):
                run.report.refusals[row.blob_id] = exc
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

    async def upload(
        self, row: Row, sealed: bytes | None = None, flow: Flow | None = None
    ) -> None:
        """PUT one blob as its sealed bytes lie in the store, or from ``sealed`` (its
        bytes the caller just sealed: not read back). A 409 counts as done. ``flow``
        counts the bytes as they go.

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
            body: bytes | AsyncIterator[bytes] = sealed if sealed is not None else (
                self.store.read_sealed(fresh) if flow is None
                else counted(self.store.read_sealed(fresh), flow)
            )
            meta = (await self.metas_to_send(ns, [fresh.blob_id])).get(fresh.blob_id)
            try:
                await self.transport.put_blob(ns, fresh.blob_id, body, fresh.sealed_size, meta)
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
            small = [r for r in rows if streamed and self._small(r)]
            for batch in batches(small, self.settings.stream_max_count,
                                 self.settings.stream_max_bytes):
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
        # SPEC 11: a third element for the blobs with a meta only (a v1 server is unaffected).
        metas = await self.metas_to_send(run.namespace, [r.blob_id for r in rows])
        items = [(r.blob_id, r.sealed_size or 0, metas[r.blob_id]) if r.blob_id in metas
                 else (r.blob_id, r.sealed_size or 0) for r in rows]

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
        # The sets once, not once per row: 500 rows made that a quarter million steps.
        went = set(stored)
        there = set(existing) - went
        ok = went | there
        await self._uploaded(run, [r for r in rows if r.blob_id in went])
        # The server had these ids already: the same blob, or another one (SPEC 7).
        await self._uploaded(run, await self._settle_existing(
            run.namespace, run.report, [r for r in rows if r.blob_id in there], run,
        ))
        lost = [r for r in rows if r.blob_id not in ok]
        if lost:
            await self._retry(
                run, lost, SyncStatus.PENDING_UPLOAD, ClientError("not acknowledged by server")
            )


def _id_taken(blob_id: str) -> IdTaken:
    return IdTaken(f"id {blob_id} is taken by another blob on the server")


def _str_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


# Sealed blobs held in memory go to the socket joined into pieces of about this size: a
# write per 10 KB blob cost more than the copy.
JOIN_BYTES = 256 << 10


async def _in_memory(payloads: list[bytes]) -> AsyncIterator[bytes]:
    group: list[bytes] = []
    n = 0
    for data in payloads:
        group.append(data)
        n += len(data)
        if n >= JOIN_BYTES:
            yield group[0] if len(group) == 1 else b"".join(group)
            group, n = [], 0
    if group:
        yield b"".join(group)

