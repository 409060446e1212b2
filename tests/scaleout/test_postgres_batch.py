"""PostgresIndex.insert_blobs (the batch insert of stream uploads) on a real PostgreSQL.

Two PostgresIndex instances on one database stand for two server processes: the quota and
id uniqueness must hold across them exactly as for single inserts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from blobsync.server.storage.base import BlobExists, BlobInfo, NewBlob, Order, QuotaExceeded
from blobsync.server.storage.postgres import PostgresIndex

TAG = bytes(range(16))


@pytest.fixture
async def pair(postgres_db: str) -> AsyncIterator[tuple[PostgresIndex, PostgresIndex]]:
    a, b = PostgresIndex(postgres_db, max_size=8), PostgresIndex(postgres_db, max_size=8)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def rows(ids: list[str], size: int = 10, tag: str = "") -> list[NewBlob]:
    return [NewBlob(i, size, TAG, f"loc/{i}{tag}") for i in ids]


async def test_outcomes_order_flags_and_tombstones(
    pair: tuple[PostgresIndex, PostgresIndex],
) -> None:
    index, _ = pair
    await index.insert_blob("u", "ns", NewBlob("old", 7, TAG, "loc/old"))
    await index.insert_blob("u", "ns", NewBlob("t", 1, TAG, "loc/t1"))
    await index.delete_blob("u", "ns", "t")
    # Ids not in sorted order, an existing one, a duplicate inside the run, a flag.
    run = rows(["z", "old", "a", "t", "z"], size=5, tag="-new")
    run[2] = NewBlob("a", 5, TAG, "loc/a-new", frozenset({"PENDING"}))
    out = await index.insert_blobs("u", "ns", run)
    kinds = [type(o) for o in out]
    assert kinds == [BlobInfo, BlobExists, BlobInfo, BlobInfo, BlobExists]
    infos = [o for o in out if isinstance(o, BlobInfo)]
    assert [i.blob_id for i in infos] == ["z", "a", "t"]
    assert [i.seq for i in infos] == sorted(i.seq for i in infos)  # stored in run order
    assert await index.list_blobs("u", "ns", order=Order.OLDEST_FIRST) == ["old", "z", "a", "t"]
    a = await index.get_blob("u", "ns", "a")
    assert a is not None and a.flags == {"PENDING"} and a.location == "loc/a-new"
    assert (await index.get_blob("u", "ns", "old")).location == "loc/old"  # type: ignore[union-attr]
    assert (await index.get_blob("u", "ns", "z")).location == "loc/z-new"  # type: ignore[union-attr]
    assert await index.list_deleted("u", "ns") == []
    assert await index.usage("u") == 7 + 3 * 5
    assert await index.insert_blobs("u", "ns", []) == []


async def test_quota_ends_the_run_and_leaves_the_rest_out(
    pair: tuple[PostgresIndex, PostgresIndex],
) -> None:
    index, _ = pair
    await index.insert_blob("u", "ns", NewBlob("d", 1, TAG, "loc/d"))
    await index.delete_blob("u", "ns", "d")
    out = await index.insert_blobs("u", "ns", rows(["a", "b", "c", "d"]), quota=25)
    assert [type(o) for o in out] == [BlobInfo, BlobInfo, QuotaExceeded]
    assert sorted(await index.list_blobs("u", "ns")) == ["a", "b"]
    assert await index.usage("u") == 20
    assert await index.list_deleted("u", "ns") == ["d"]  # d was never stored


async def test_two_processes_batching_at_once_stay_exact(
    pair: tuple[PostgresIndex, PostgresIndex],
) -> None:
    size, quota = 10, 10 * 45 + 5  # room for exactly 45 blobs
    # Eight runs of ten, half on each "process", overlapping in pairs: 40 distinct ids.
    runs = [[f"r{n // 2}-{i}" for i in range(10)] for n in range(8)]
    for run in runs[1::2]:
        run.reverse()  # the same ids, in the other order: the inserts must not deadlock

    async def batch(n: int) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        return await pair[n % 2].insert_blobs("u", "ns", rows(runs[n], tag=f"-{n}"), quota)

    results = await asyncio.gather(*(batch(n) for n in range(8)))
    stored = [o for out in results for o in out if isinstance(o, BlobInfo)]
    assert len(stored) == 40 and len({i.blob_id for i in stored}) == 40  # each id once
    assert len({i.seq for i in stored}) == 40
    assert sum(isinstance(o, QuotaExceeded) for out in results for o in out) == 0
    assert await pair[0].usage("u") == 40 * size
    assert await pair[1].count_blobs("u", "ns") == 40
    # Now only five more fit: four runs of three, racing, store exactly five.
    more = [[f"m{n}-{i}" for i in range(3)] for n in range(4)]
    late = await asyncio.gather(
        *(pair[n % 2].insert_blobs("u", "ns", rows(more[n]), quota) for n in range(4))
    )
    assert sum(isinstance(o, BlobInfo) for out in late for o in out) == 5
    assert all(isinstance(out[-1], QuotaExceeded) for out in late if len(out) < 3)
    assert await pair[0].usage("u") == 45 * size
    assert await pair[1].count_blobs("u", "ns") == 45
