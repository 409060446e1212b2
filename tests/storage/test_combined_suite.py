"""The combined suite: the whole BlobStore over every configuration the server runs
(BACKENDS in tests/helpers/storage_backends.py: memory, SQLite with files, SQLite tiered,
PostgreSQL with S3, PostgreSQL with the data dir's own payloads).

Only what depends on the two layers together is here: a blob's whole way in and out, the
race of one id's puts (the index picks the winner, the losers' payloads go), and gc and the
sweep (the payloads no index row names). ``test_stream_batch.py`` and
``test_store_observer.py`` run over the same configurations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from blobsync.format.limits import CHUNK_SIZE
from blobsync.server.storage.base import (
    BlobExists,
    BlobInfo,
    BlobNotFound,
)
from blobsync.server.storage.blobstore import BlobStore
from tests.helpers.storage import (
    NS,
    Sealed,
    U,
    chunked,
    locations,
    put,
    read_all,
    stray_temps,
)


# blobs --------------------------------------------------------------------------------
async def test_put_get_read_delete(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("b1", 3 * CHUNK_SIZE + 5)
    info = await put(store, "b1", data, flags=frozenset({"PENDING"}))
    assert (info.user, info.namespace, info.blob_id) == (U, NS, "b1")
    assert info.size == len(data) and info.tag == data[-16:]
    assert info.flags == {"PENDING"}
    got = await store.index.get_blob(U, NS, "b1")
    assert got == info
    assert await read_all(store, "b1") == data
    assert info.location in await locations(store)
    assert await store.index.usage(U) == len(data)

    await store.delete(U, NS, "b1")
    assert await store.index.get_blob(U, NS, "b1") is None
    assert info.location not in await locations(store)
    assert await store.index.usage(U) == 0
    with pytest.raises(BlobNotFound):
        await store.read(U, NS, "b1")
    with pytest.raises(BlobNotFound):
        await store.delete(U, NS, "b1")


async def test_concurrent_puts_of_one_id(store: BlobStore, sealed: Sealed) -> None:
    bodies = [sealed("race", 20_000) for _ in range(16)]
    results = await asyncio.gather(
        *(
            store.put(U, NS, "race", chunked(b, size=3000, pause=0.001), size=len(b))
            for b in bodies
        ),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if isinstance(r, BlobInfo)]
    assert len(winners) == 1, results
    assert all(isinstance(r, BlobExists) for i, r in enumerate(results) if i != winners[0])
    assert await read_all(store, "race") == bodies[winners[0]]
    assert await locations(store) == {results[winners[0]].location}  # type: ignore[union-attr]
    assert await store.index.usage(U) == len(bodies[0])
    assert stray_temps(store) == []


# gc -----------------------------------------------------------------------------------
async def test_gc_takes_orphans_only(store: BlobStore, sealed: Sealed) -> None:
    kept = sealed("kept")
    await put(store, "kept", kept)
    # a put that crashed between payload commit and index insert
    w = await store.payloads.writer(U, NS, "orphan")
    await w.write(sealed("orphan"))
    orphan = await w.commit()
    assert orphan in await locations(store)

    assert await store.gc(grace_seconds=3600) == 0  # too young to be sure
    assert orphan in await locations(store)
    assert await store.gc(grace_seconds=0) == 1
    assert orphan not in await locations(store)
    assert await read_all(store, "kept") == kept
    assert await store.gc(grace_seconds=0) == 0


async def test_sweep_takes_old_orphans_and_spares_writes_under_way(
    store: BlobStore, sealed: Sealed
) -> None:
    """The server's sweep on every backend: orphans older than the grace go, a younger
    one stays, and a put under way here is spared even with a grace of 0 (whatever it
    has stored so far, and its payload once committed)."""
    w = await store.payloads.writer(U, NS, "orphan")
    await w.write(sealed("orphan"))
    orphan = await w.commit()
    await asyncio.sleep(0.05)  # the put below starts after the orphan's commit

    body = sealed("live", 3 * CHUNK_SIZE)
    resume = asyncio.Event()

    async def held_chunks() -> AsyncIterator[bytes]:
        yield body[:CHUNK_SIZE]
        await resume.wait()
        yield body[CHUNK_SIZE:]

    live = asyncio.ensure_future(store.put(U, NS, "live", held_chunks(), size=len(body)))
    await asyncio.sleep(0.05)
    report = await store.sweep(3600)
    assert (report.removed, report.spared) == (0, 1)
    report = await store.sweep(0)
    assert (report.removed, report.spared) == (1, 0)
    assert orphan not in await locations(store)
    resume.set()
    info = await live
    assert await read_all(store, "live") == body
    assert (await store.sweep(0)).removed == 0
    assert await locations(store) == {info.location}
