"""What the storage suites and the other storage tests share: blobs streamed in like a
socket would, whole reads, the payload locations a store holds, and the snapshot a refused
put must leave unchanged.

Test modules import these from here, never from one another (a test module imported as a
helper is collected, and imported, twice).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest

from blobsync.server.storage.base import BlobInfo, BlobNotFound
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.files import FilePayloads
from blobsync.server.storage.tiered import TieredPayloads

U, NS = "alice", "default"
Sealed = Callable[..., bytes]


async def chunked(
    data: bytes, size: int = 4096, pause: float = 0.0, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces, yielding to the loop between them like a socket would."""
    for n, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and n == fail_after:
            raise ConnectionResetError("connection dropped")
        yield data[start : start + size]
        await asyncio.sleep(pause)


async def put(
    store: BlobStore, blob_id: str, data: bytes, user: str = U, ns: str = NS, **kw: object
) -> BlobInfo:
    kw.setdefault("size", len(data))
    return await store.put(user, ns, blob_id, chunked(data), **kw)  # type: ignore[arg-type]


async def read_all(store: BlobStore, blob_id: str, user: str = U, ns: str = NS,
                   offset: int = 0, length: int | None = None) -> bytes:
    _, chunks = await store.read(user, ns, blob_id, offset, length)
    return b"".join([c async for c in chunks])


async def locations(store: BlobStore) -> set[str]:
    return {loc async for loc, _ in store.payloads.locations()}


def stray_temps(store: BlobStore) -> list[str]:
    """Temp files a backend keeps outside its committed locations."""
    payloads = store.payloads
    if isinstance(payloads, TieredPayloads):
        payloads = payloads.files
    if isinstance(payloads, FilePayloads):
        return [os.path.join(d, f) for d, _, files in os.walk(payloads.tmp_root) for f in files]
    return []


class Snapshot:
    """What must not change when a put fails."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    async def take(self) -> Snapshot:
        self.locations = await locations(self.store)
        self.usage = await self.store.index.usage(U)
        self.ids = await self.store.index.list_blobs(U, NS)
        return self

    async def assert_unchanged(self, blob_id: str) -> None:
        assert await self.store.index.get_blob(U, NS, blob_id) is None
        assert await locations(self.store) == self.locations
        assert await self.store.index.usage(U) == self.usage
        assert await self.store.index.list_blobs(U, NS) == self.ids
        assert stray_temps(self.store) == []
        with pytest.raises(BlobNotFound):
            await self.store.read(U, NS, blob_id)
