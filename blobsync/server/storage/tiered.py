"""The default payload store: small payloads inline in SQLite, large ones as files.

Payloads up to the inline store's ``max_size`` (``INLINE_MAX``, every blob a stream upload
batches) are rows of ``SQLitePayloads``: a batch is one transaction and one fsync instead
of a file, an fsync and a link per blob. Larger ones are files (``FilePayloads``), streamed
through in chunks. A writer buffers up to that many bytes and, when more come, hands them
to a file writer and streams the rest through it, so memory stays bounded whatever the size.

A location's prefix says where it lives (``sqlitepayloads.is_inline``); file locations
keep Soledad's layout, so a data dir written before this store existed reads as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import PayloadStore, PayloadWriter
from .files import FilePayloads
from .sqlitepayloads import InlineWriter, SQLitePayloads, is_inline


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
            # Too big to be inline: what was buffered goes first into a file writer.
            self._large = await self._store.files.writer(*self._names)
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

    def __init__(self, inline: SQLitePayloads, files: FilePayloads) -> None:
        self.inline = inline
        self.files = files

    def _tier(self, location: str) -> PayloadStore:
        return self.inline if is_inline(location) else self.files

    async def open(self) -> None:
        await self.files.open()
        await self.inline.open()

    async def close(self) -> None:
        try:
            await self.inline.close()
        finally:
            await self.files.close()

    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter:
        small = await self.inline.writer(user, namespace, blob_id)  # checks the names
        return TieredWriter(self, small, user, namespace, blob_id)

    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Each payload to a location of its own, in the order given: those up to the
        inline limit in one SQLite transaction, any larger ones as files. All are durable
        when this returns; if it raises, none is left."""
        limit = self.inline.max_size
        small = [i for i, (_, data) in enumerate(items) if len(data) <= limit]
        large = [i for i, (_, data) in enumerate(items) if len(data) > limit]
        out: list[str] = [""] * len(items)
        done: list[str] = []
        try:
            for tier, picked in ((self.files, large), (self.inline, small)):
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
        one thread hop for the files. BlobNotFound if any is missing."""
        out: list[bytes] = [b""] * len(locations)
        for tier, wanted in ((self.inline, True), (self.files, False)):
            picked = [i for i, loc in enumerate(locations) if is_inline(loc) is wanted]
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
        return None if is_inline(location) else self.files.file_path(location)

    async def delete(self, location: str) -> None:
        await self._tier(location).delete(location)

    async def delete_many(self, locations: list[str]) -> None:
        """Each tier's share in one go: one transaction for the inline ones."""
        await self.inline.delete_many([loc for loc in locations if is_inline(loc)])
        await self.files.delete_many([loc for loc in locations if not is_inline(loc)])

    async def reclaim(self) -> int:
        return await self.inline.reclaim()

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        for tier in (self.files, self.inline):
            async for item in tier.locations():
                yield item
