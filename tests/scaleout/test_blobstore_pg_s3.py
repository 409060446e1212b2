"""BlobStore on PostgreSQL + S3, with two stores standing for two server processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from blobsync.format import open_sealed, seal
from blobsync.server.storage.base import BlobExists, BlobNotFound, QuotaExceeded
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.postgres import PostgresIndex
from blobsync.server.storage.s3 import S3Payloads
from tests.harness.s3 import S3Endpoint

SECRET = os.urandom(128)


def new_store(dsn: str, endpoint: S3Endpoint, bucket: str, quota: int = 0) -> BlobStore:
    payloads = S3Payloads(
        bucket,
        "blobs",
        part_size=64 * 1024,  # small parts, so that puts here go multipart
        endpoint_url=endpoint.url,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
    )
    return BlobStore(PostgresIndex(dsn, max_size=10), payloads, quota=quota)


@pytest.fixture
async def two_stores(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str
) -> AsyncIterator[tuple[BlobStore, BlobStore]]:
    stores = (
        new_store(postgres_db, s3_endpoint, s3_bucket, quota=400_000),
        new_store(postgres_db, s3_endpoint, s3_bucket, quota=400_000),
    )
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def chunks_of(data: bytes, size: int = 50_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)  # let the other "process" run between chunks


async def read_all(
    store: BlobStore, blob_id: str, offset: int = 0, length: int | None = None
) -> bytes:
    _, chunks = await store.read("alice", "default", blob_id, offset, length)
    return b"".join([c async for c in chunks])


async def payload_count(store: BlobStore) -> int:
    return len([loc async for loc, _ in store.payloads.locations()])


async def test_put_read_delete(two_stores: tuple[BlobStore, BlobStore]) -> None:
    a, b = two_stores
    sealed = seal(SECRET, "doc", os.urandom(200_000))
    info = await a.put("alice", "default", "doc", chunks_of(sealed), size=len(sealed))
    assert info.size == len(sealed) and info.tag == sealed[-16:]
    # The other process sees it at once, bytes and all.
    assert open_sealed(SECRET, "doc", await read_all(b, "doc")) == open_sealed(
        SECRET, "doc", sealed
    )
    assert await read_all(b, "doc", 1000, 5000) == sealed[1000:6000]
    await b.delete("alice", "default", "doc")
    with pytest.raises(BlobNotFound):
        await a.read("alice", "default", "doc")
    assert await a.index.list_deleted("alice", "default") == ["doc"]
    assert await payload_count(a) == 0


async def test_same_id_from_two_processes_one_wins_no_orphan(
    two_stores: tuple[BlobStore, BlobStore],
) -> None:
    a, b = two_stores
    bodies = [seal(SECRET, "race", os.urandom(150_000)) for _ in range(6)]

    async def attempt(n: int) -> bytes | None:
        store = a if n % 2 else b
        try:
            await store.put("alice", "default", "race", chunks_of(bodies[n]))
        except BlobExists:
            return None
        return bodies[n]

    results = await asyncio.gather(*(attempt(n) for n in range(6)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await read_all(a, "race") == winners[0]
    # The losers deleted their own objects: exactly one payload remains.
    assert await payload_count(a) == 1
    assert await a.index.usage("alice") == len(winners[0])


async def test_quota_holds_across_processes(two_stores: tuple[BlobStore, BlobStore]) -> None:
    a, b = two_stores
    bodies = {f"q{n}": seal(SECRET, f"q{n}", os.urandom(99_000)) for n in range(8)}

    async def attempt(n: int) -> bool:
        store = a if n % 2 else b
        blob_id = f"q{n}"
        try:
            await store.put("alice", "default", blob_id, chunks_of(bodies[blob_id]))
        except QuotaExceeded:
            return False
        return True

    results = await asyncio.gather(*(attempt(n) for n in range(8)))
    stored = sum(results)
    assert stored == 400_000 // len(bodies["q0"])  # as many as fit, not one more
    assert await b.index.usage("alice") == stored * len(bodies["q0"])
    assert await payload_count(a) == stored  # refused writes left no objects


async def test_gc_takes_orphans_only(two_stores: tuple[BlobStore, BlobStore]) -> None:
    a, b = two_stores
    kept = seal(SECRET, "kept", b"kept")
    await a.put("alice", "default", "kept", chunks_of(kept))
    # An orphan, as a process that died between commit and insert would leave.
    writer = await a.payloads.writer("alice", "default", "ghost")
    await writer.write(seal(SECRET, "ghost", b"ghost"))
    orphan = await writer.commit()
    assert await b.gc(grace_seconds=3600) == 0  # too young to tell from an upload
    assert await b.gc(grace_seconds=-5) == 1
    assert [loc async for loc, _ in a.payloads.locations()] == [
        (await a.index.get_blob("alice", "default", "kept")).location  # type: ignore[union-attr]
    ]
    assert orphan not in {loc async for loc, _ in a.payloads.locations()}
    assert await read_all(a, "kept") == kept
