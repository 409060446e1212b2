"""A stream upload's storage side (SPEC 3): what becomes of each blob of the stream.

The route (``routes_stream``) reads the request body through the sans-IO UpstreamReader
and hands the events here; everything else is storage: which blobs are present already,
the quota the header's sizes would pass, the batch of small blobs stored together
(``BlobStore.batch``), larger blobs stored alone through ``BlobStore.put``, and the
stored/existing lists the answer reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from blobsync.format.stream import BlobStart, Event, StreamEnd, UpstreamHeader

from .base import BATCH_BLOB_MAX, BlobExists, BlobInfo, QuotaExceeded
from .blobstore import BlobStore


class BlobEvents(Protocol):
    """A stream's events after its header, as the route reads them off the body."""

    async def next(self) -> Event: ...

    def blob_body(self) -> AsyncIterator[bytes]:
        """The current blob's bytes, up to its end."""
        ...

    async def whole_blob(self) -> bytes:
        """The current blob's bytes, up to its end, in one piece (small blobs only)."""
        ...

    async def whole_blobs(self, max_size: int) -> list[tuple[str, bytes]]:
        """The next blobs of at most ``max_size`` bytes, (id, bytes) each, taken without
        events; [] when the next thing is not one (``next`` goes on from there)."""
        ...

    async def skip_blob(self) -> None:
        """Consume what storage did not read of the current blob."""


class StreamUpload:
    """One stream upload: what became of each blob so far, and the batch of small blobs
    waiting to be stored together."""

    def __init__(self, store: BlobStore, uuid: str, ns: str) -> None:
        self.store = store
        self.uuid = uuid
        self.ns = ns
        self.batch = self.store.batch(uuid, ns)
        self.stored: list[str] = []
        self.existing: list[str] = []
        self.current: str | None = None  # the blob being received, or the one that failed
        self.metas: dict[str, str] = {}  # SPEC 11: the header's metas, by blob id

    def _skipped(self, blob_id: str) -> None:
        """A blob the header check found present: storage never sees it, so it is reported
        to the store's observer here, as put and batches report theirs."""
        self.existing.append(blob_id)
        self.store.observer.on_refused(BlobExists(f"blob {blob_id} exists"))

    async def flush(self) -> None:
        """Store the waiting batch; raise QuotaExceeded (or a storage failure) naming the
        blob it concerns in ``current``."""
        waiting = self.batch.ids()
        if not waiting:
            return
        try:
            outcomes = await self.batch.flush()
        except BaseException:
            self.current = waiting[0]
            raise
        for blob_id, outcome in outcomes:
            # The store has reported each outcome to its observer already.
            if isinstance(outcome, BlobInfo):
                self.stored.append(blob_id)
            elif isinstance(outcome, BlobExists):
                self.existing.append(blob_id)
            else:
                self.current = blob_id
                raise outcome

    async def receive(self, pump: BlobEvents, header: UpstreamHeader) -> None:
        present = await present_ids(self.store, self.uuid, self.ns, header.items)
        await check_quota(self.store, self.uuid, header.items, present)
        self.metas = metas = header.metas
        while True:
            # Small blobs the body holds whole, the usual case, without events.
            if taken := await pump.whole_blobs(BATCH_BLOB_MAX):
                await self._take_whole(taken, present)
                continue
            if isinstance(event := await pump.next(), StreamEnd):
                break
            assert isinstance(event, BlobStart) and event.blob_id is not None
            self.current = event.blob_id
            if event.blob_id in present:
                self._skipped(event.blob_id)  # its bytes are read and dropped
            elif self.batch.fits(event.size):
                # In one piece: most small blobs arrive whole in one read of the body, and
                # an async generator and a check fed piece by piece per blob cost more than
                # storing it.
                self.batch.take(event.blob_id, await pump.whole_blob(), event.size,
                                metas.get(event.blob_id) if metas else None)
                if self.batch.full:
                    await self.flush()
            else:
                # Stored order is stream order: what waits goes in before this one.
                await self.flush()
                self.current = event.blob_id
                await self._put_alone(pump, event.blob_id, event.size)
            await pump.skip_blob()
            self.current = None
        await self.flush()

    async def _take_whole(self, taken: list[tuple[str, bytes]], present: set[str]) -> None:
        batch = self.batch
        metas = self.metas
        for blob_id, data in taken:
            self.current = blob_id
            if blob_id in present:
                self._skipped(blob_id)
                continue
            batch.take(blob_id, data, len(data), metas.get(blob_id) if metas else None)
            if batch.full:
                await self.flush()
        self.current = None

    async def _put_alone(self, pump: BlobEvents, blob_id: str, size: int) -> None:
        body = pump.blob_body()
        try:
            await self.store.put(self.uuid, self.ns, blob_id, body, size=size,
                                 meta=self.metas.get(blob_id))
            self.stored.append(blob_id)
        except BlobExists:
            self.existing.append(blob_id)  # reported by put to the store's observer
        finally:
            await body.aclose()  # type: ignore[attr-defined]


async def present_ids(
    store: BlobStore, uuid: str, ns: str, items: list[tuple[str, int]]
) -> set[str]:
    """The ids of the header already stored: one query instead of one per blob."""
    if not items:
        return set()
    return {i.blob_id for i in await store.index.get_blobs(uuid, ns, [b for b, _ in items])}


async def check_quota(
    store: BlobStore, uuid: str, items: list[tuple[str, int]], present: set[str]
) -> None:
    """507 from the sizes the header declares, before any body byte is read (SPEC 5)."""
    if not store.quota or not items:
        return
    needed = sum(size for blob_id, size in items if blob_id not in present)
    usage = await store.index.usage(uuid)
    if usage + needed > store.quota:
        raise QuotaExceeded(
            f"storing {needed} bytes would pass the quota of {store.quota} bytes "
            f"({usage} used)"
        )
