"""Small payloads inline in a database, large ones in a store for big objects.

Two configurations (``factory.make_payloads``):

- the default store: rows of ``SQLitePayloads`` and files (``FilePayloads``);
- PostgreSQL metadata + S3 payloads: rows of ``PostgresPayloads`` and S3 objects.

Payloads up to the inline store's ``max_size`` (``INLINE_MAX`` by default, every blob a
stream upload batches) are rows: a batch is one transaction instead of a file (an fsync and
a link) or an S3 request per blob. Larger ones go to the large tier, streamed through in
chunks. A writer buffers up to that many bytes and, when more come, hands them to a large
writer and streams the rest through it, so memory stays bounded whatever the size.

The inline store tells its locations apart (``InlineStore.owns``); the large tier's keep
their layout, so data written before this store existed (files, or S3 objects of small
blobs from before PostgreSQL kept them inline) reads as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import PayloadStore, PayloadWriter
from .inline import InlineStore, InlineWriter


class TieredWriter(PayloadWriter):
    def __init__(
        self, store: TieredPayloads, small: InlineWriter, user: str, namespace: str, blob_id: str
    ) -> None:
        self._store = store
        self._small = small
        self._large: PayloadWriter | None = None
        self._names = (user, namespace, blob_id)
        self._done = False

    async def write(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        if self._large is None:
            if self._small.fits(len(chunk)):
                await self._small.write(chunk)
                return
            # Too big to be inline: what was buffered goes first into a large writer.
            self._large = await self._store.large.writer(*self._names)
            await self._large.write(self._small.take())
        await self._large.write(chunk)

    async def commit(self) -> str:
        location = await (self._small if self._large is None else self._large).commit()
        self._done = True
        return location

    async def abort(self) -> None:
        self._done = True
        await self._small.abort()
        if self._large is not None:
            await self._large.abort()


class TieredPayloads(PayloadStore):
    batched_reads = True  # read_many reads a run in one go

    def __init__(self, inline: InlineStore, large: PayloadStore) -> None:
        self.inline = inline
        self.large = large

    @property
    def files(self) -> PayloadStore:
        """The large tier (files on the default store; the older name)."""
        return self.large

    def _tier(self, location: str) -> PayloadStore:
        return self.inline if self.inline.owns(location) else self.large

    async def open(self) -> None:
        await self.large.open()
        try:
            await self.inline.open()
        except BaseException:
            await self.large.close()
            raise

    async def close(self) -> None:
        try:
            await self.inline.close()
        finally:
            await self.large.close()

    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter:
        small = await self.inline.writer(user, namespace, blob_id)  # checks the names
        return TieredWriter(self, small, user, namespace, blob_id)

    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Each payload to a location of its own, in the order given: those up to the
        inline limit in one transaction of the inline store, any larger ones in the large
        tier first. All are durable
        when this returns; if it raises, none is left."""
        limit = self.inline.max_size
        small = [i for i, (_, data) in enumerate(items) if len(data) <= limit]
        large = [i for i, (_, data) in enumerate(items) if len(data) > limit]
        out: list[str] = [""] * len(items)
        done: list[str] = []
        try:
            for tier, picked in ((self.large, large), (self.inline, small)):
                if picked:
                    located = await tier.store_many(user, namespace, [items[i] for i in picked])
                    done += located
                    for i, location in zip(picked, located, strict=True):
                        out[i] = location
        except BaseException:
            # Shielded: a cancelled caller must not leave the first tier's payloads behind.
            await asyncio.shield(self._delete_all(done))
            raise
        return out

    async def _delete_all(self, locations: list[str]) -> None:
        for location in locations:
            await self.delete(location)

    async def read_many(self, locations: list[str]) -> list[bytes]:
        """The whole payloads at ``locations``, in order: one query for the inline ones,
        the large tier's read_many for the rest. BlobNotFound if any is missing."""
        out: list[bytes] = [b""] * len(locations)
        owns = self.inline.owns
        for tier, wanted in ((self.inline, True), (self.large, False)):
            picked = [i for i, loc in enumerate(locations) if owns(loc) is wanted]
            if picked:
                found = await tier.read_many([locations[i] for i in picked])
                for i, data in zip(picked, found, strict=True):
                    out[i] = data
        return out

    def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._tier(location).read(location, offset, length)

    def file_path(self, location: str) -> str | None:
        """The file holding a payload, for the ones kept as files (see FilePayloads)."""
        return None if self.inline.owns(location) else self.large.file_path(location)

    async def delete(self, location: str) -> None:
        await self._tier(location).delete(location)

    async def delete_many(self, locations: list[str]) -> None:
        """Each tier's share in one go: one transaction for the inline ones."""
        owns = self.inline.owns
        await self.inline.delete_many([loc for loc in locations if owns(loc)])
        await self.large.delete_many([loc for loc in locations if not owns(loc)])

    async def reclaim(self) -> int:
        return await self.inline.reclaim() + await self.large.reclaim()

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        for tier in (self.large, self.inline):
            async for item in tier.locations():
                yield item
