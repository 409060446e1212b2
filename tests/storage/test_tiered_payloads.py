"""What only the tiered store promises: small payloads inline in SQLite, large ones as files.

The payload suite (test_payload_suite.py, ``tiered``) checks it as a payload store like
any other, and the combined suite (``sqlite-tiered``, ``postgres-local``) under a real
index; these check where payloads land and what a failure or crash leaves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobsync.format import LimitExceeded, seal
from blobsync.server.storage.base import BlobNotFound
from blobsync.server.storage.blobstore import BATCH_BLOB_MAX, BlobStore
from blobsync.server.storage.factory import make_store
from blobsync.server.storage.files import FilePayloads
from blobsync.server.storage.sqlitepayloads import INLINE_MAX, PREFIX, SQLitePayloads
from blobsync.server.storage.tiered import TieredPayloads

U, NS = "alice", "default"
SECRET = os.urandom(128)


@pytest.fixture
async def tiered(tmp_path: Path) -> AsyncIterator[TieredPayloads]:
    store = TieredPayloads(
        SQLitePayloads(tmp_path / "payloads.sqlite3"), FilePayloads(tmp_path / "blobs")
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def write(store: TieredPayloads, blob_id: str, data: bytes, piece: int = 1 << 16) -> str:
    w = await store.writer(U, NS, blob_id)
    for start in range(0, len(data), piece):
        await w.write(data[start : start + piece])
    return await w.commit()


async def read(store: TieredPayloads, location: str, offset: int = 0,
               length: int | None = None) -> bytes:
    return b"".join([c async for c in store.read(location, offset, length)])


async def locations(store: TieredPayloads) -> set[str]:
    return {loc async for loc, _ in store.locations()}


def temp_files(files: FilePayloads) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(files.tmp_root) for f in names]


async def test_the_store_a_data_dir_gets_inlines_every_batched_blob(tmp_path: Path) -> None:
    # Every blob a stream upload batches must go inline, or batches pay for files again:
    # checked on the store the server builds, not on the constants.
    store = make_store(str(tmp_path), None, None)
    assert isinstance(store.payloads, TieredPayloads)
    await store.payloads.open()
    try:
        batched = await write(store.payloads, "batched", os.urandom(BATCH_BLOB_MAX))
        streamed = await write(store.payloads, "streamed", os.urandom(BATCH_BLOB_MAX + 1))
        assert batched.startswith(PREFIX)
        assert not streamed.startswith(PREFIX)
    finally:
        await store.payloads.close()


@pytest.mark.parametrize("piece", [1 << 16, 1000, INLINE_MAX + 1])
async def test_inline_up_to_the_threshold_and_a_file_beyond(
    tiered: TieredPayloads, piece: int
) -> None:
    exact = os.urandom(INLINE_MAX)
    over = os.urandom(INLINE_MAX + 1)
    inline = await write(tiered, "exact", exact, piece)
    spilled = await write(tiered, "over", over, piece)

    assert inline.startswith(PREFIX)
    assert not spilled.startswith(PREFIX)
    assert os.path.getsize(os.path.join(tiered.files.root, *spilled.split("/"))) == len(over)
    assert await read(tiered, inline) == exact
    assert await read(tiered, spilled) == over
    assert await locations(tiered) == {inline, spilled}
    assert await tiered.read_many([spilled, inline]) == [over, exact]
    assert temp_files(tiered.files) == []


async def test_writer_aborted_after_spilling_leaves_no_file(tiered: TieredPayloads) -> None:
    w = await tiered.writer(U, NS, "big")
    await w.write(os.urandom(INLINE_MAX))
    assert temp_files(tiered.files) == []  # still in memory
    await w.write(os.urandom(3 << 16))
    assert len(temp_files(tiered.files)) == 1  # spilled to a temp file
    await w.abort()
    assert temp_files(tiered.files) == []
    assert await locations(tiered) == set()
    with pytest.raises(RuntimeError):
        await w.write(b"more")


async def test_inline_read_clamps_like_a_file(tiered: TieredPayloads) -> None:
    data = os.urandom(5000)
    inline = await write(tiered, "a", data)
    w = await tiered.files.writer(U, NS, "a")
    await w.write(data)
    as_file = await w.commit()
    assert inline.startswith(PREFIX) and not as_file.startswith(PREFIX)
    for offset, length in [(0, None), (-5, 10), (10, -3), (4990, 100), (5000, None),
                           (6000, 1), (1, 0), (0, 5000), (2500, None)]:
        want = await read(tiered, as_file, offset, length)
        assert await read(tiered, inline, offset, length) == want, (offset, length)
    assert [c async for c in tiered.read(await write(tiered, "e", b""))] == []


async def test_missing_and_foreign_locations(tiered: TieredPayloads) -> None:
    gone = await write(tiered, "g", b"bytes")
    await tiered.delete(gone)
    await tiered.delete(gone)  # already gone: no error
    with pytest.raises(BlobNotFound):
        await read(tiered, gone)
    with pytest.raises(BlobNotFound):
        await tiered.read_many([gone])
    with pytest.raises(ValueError):
        await tiered.inline.delete("alice/default/a/abc/abcdef/abcdefgh")


async def test_inline_store_refuses_large_payloads(tmp_path: Path) -> None:
    store = SQLitePayloads(tmp_path / "p.sqlite3", max_size=10)
    await store.open()
    try:
        w = await store.writer(U, NS, "x")
        await w.write(b"0123456789")
        with pytest.raises(LimitExceeded):
            await w.write(b"!")
        with pytest.raises(LimitExceeded):
            await store.store_many(U, NS, [("a", b"ok"), ("b", b"x" * 11)])
        assert [loc async for loc, _ in store.locations()] == []
    finally:
        await store.close()


async def test_store_many_keeps_order_across_tiers(tiered: TieredPayloads) -> None:
    sizes = [10, INLINE_MAX + 1, 0, INLINE_MAX, 3000, INLINE_MAX + 7, 1]
    items = [(f"b{i}", os.urandom(size)) for i, size in enumerate(sizes)]
    located = await tiered.store_many(U, NS, items)
    assert [loc.startswith(PREFIX) for loc in located] == [s <= INLINE_MAX for s in sizes]
    assert len(set(located)) == len(items)
    assert await tiered.read_many(located) == [data for _, data in items]
    for loc, (_, data) in zip(located, items, strict=True):
        assert await read(tiered, loc) == data
    assert await locations(tiered) == set(located)


async def test_store_many_that_fails_leaves_nothing(tiered: TieredPayloads) -> None:
    items = [("big", os.urandom(INLINE_MAX + 1)), ("small", b"small")]
    with pytest.raises(ValueError):
        await tiered.store_many(U, NS, [*items, ("../x", b"")])
    # The file tier succeeds, then the inline tier fails: the files must go too.
    await tiered.inline.close()
    try:
        with pytest.raises(RuntimeError):
            await tiered.store_many(U, NS, items)
    finally:
        await tiered.inline.open()
    assert await locations(tiered) == set()
    assert temp_files(tiered.files) == []


async def test_many_inline_payloads_page_through_locations(tiered: TieredPayloads) -> None:
    items = [(f"p{i}", i.to_bytes(2, "big")) for i in range(2500)]  # over two pages
    located = await tiered.store_many(U, NS, items)
    assert await locations(tiered) == set(located)


# with the index: what make_store builds for a data dir -------------------------------
def sealed(blob_id: str, size: int) -> bytes:
    return seal(SECRET, blob_id, os.urandom(size))


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def opened(data_dir: Path) -> BlobStore:
    store = make_store(str(data_dir), None, None)
    assert isinstance(store.payloads, TieredPayloads)
    await store.open()
    return store


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    blobs = {"small": sealed("small", 1000), "large": sealed("large", INLINE_MAX)}
    store = await opened(tmp_path)
    try:
        for blob_id, data in blobs.items():
            await store.put(U, NS, blob_id, once(data), size=len(data))
        batch = store.batch(U, NS)
        await batch.receive("batched", once(blobs.setdefault("batched", sealed("batched", 50))),
                            len(blobs["batched"]))
        await batch.flush()
    finally:
        await store.close()
    assert (tmp_path / "payloads.sqlite3").is_file()

    store = await opened(tmp_path)
    try:
        for blob_id, data in blobs.items():
            info, chunks = await store.read(U, NS, blob_id)
            assert info.location.startswith(PREFIX) is (blob_id != "large")
            assert b"".join([c async for c in chunks]) == data
    finally:
        await store.close()


async def test_put_dropped_after_spilling_leaves_nothing(tmp_path: Path) -> None:
    data = sealed("big", 2 * INLINE_MAX)

    async def dropped() -> AsyncIterator[bytes]:
        yield data[: INLINE_MAX + 1000]
        assert len(temp_files(payloads.files)) == 1  # spilled: the upload has a temp file
        raise ConnectionResetError("connection dropped")

    store = await opened(tmp_path)
    payloads = store.payloads
    assert isinstance(payloads, TieredPayloads)
    try:
        with pytest.raises(ConnectionResetError):
            await store.put(U, NS, "big", dropped(), size=len(data))
        assert temp_files(payloads.files) == []
        assert {loc async for loc, _ in payloads.locations()} == set()
        await store.put(U, NS, "big", once(data), size=len(data))  # the id is free
        assert {loc async for loc, _ in payloads.locations()} == await store.index.all_locations()
    finally:
        await store.close()


async def test_orphans_of_a_crash_are_collected_by_gc(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    try:
        kept = sealed("kept", 100)
        await store.put(U, NS, "kept", once(kept), size=len(kept))
        # A process that dies between payload commit and index insert, in either tier and
        # through either way in: its payloads stay, named by no row.
        orphans = set(await store.payloads.store_many(  # type: ignore[attr-defined]
            U, NS, [("o1", b"x" * 10), ("o2", b"y" * (INLINE_MAX + 1))]))
        w = await store.payloads.writer(U, NS, "o3")
        await w.write(b"z" * 100)
        orphans.add(await w.commit())
    finally:
        await store.close()
    assert sum(loc.startswith(PREFIX) for loc in orphans) == 2

    store = await opened(tmp_path)  # the next process
    try:
        assert orphans <= {loc async for loc, _ in store.payloads.locations()}
        assert await store.gc(grace_seconds=3600) == 0  # too young to tell from an upload
        assert await store.gc(grace_seconds=0) == 3
        left = {loc async for loc, _ in store.payloads.locations()}
        assert left == await store.index.all_locations()
        _, chunks = await store.read(U, NS, "kept")
        assert b"".join([c async for c in chunks]) == kept
    finally:
        await store.close()
