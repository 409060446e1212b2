"""StreamBatch (the small blobs of one stream upload, stored together) on every backend,
and the FilePayloads calls it uses: store_many and read_many.

Batches keep per-blob atomicity: each blob ends complete (indexed, readable, counted in
the usage) or absent (no row, no payload left behind), whatever happens to its run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from blobsync.format import InvalidBlob, ProtocolError
from blobsync.server.storage.base import (
    BlobExists,
    BlobInfo,
    BlobNotFound,
    Order,
    QuotaExceeded,
)
from blobsync.server.storage.blobstore import BATCH_BLOB_MAX, BlobStore, StreamBatch
from blobsync.server.storage.files import FilePayloads, shard_parts
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


async def receive_all(batch: StreamBatch, blobs: dict[str, bytes]) -> None:
    for blob_id, data in blobs.items():
        await batch.receive(blob_id, chunked(data, 1000), len(data))


async def test_a_run_is_stored_in_order(store: BlobStore, sealed: Sealed) -> None:
    blobs = {f"b{i}": sealed(f"b{i}", 3000 + i) for i in range(5)}
    batch = store.batch(U, NS)
    await receive_all(batch, blobs)
    assert batch.ids() == list(blobs) and len(batch) == 5
    outcomes = await batch.flush()
    assert [b for b, _ in outcomes] == list(blobs)
    assert all(isinstance(o, BlobInfo) for _, o in outcomes)
    assert len(batch) == 0 and await batch.flush() == []
    for blob_id, data in blobs.items():
        assert await read_all(store, blob_id) == data
        info = await store.index.get_blob(U, NS, blob_id)
        assert info is not None and info.tag == data[-16:] and info.size == len(data)
    assert await store.index.list_blobs(U, NS, order=Order.OLDEST_FIRST) == list(blobs)
    assert await store.index.usage(U) == sum(map(len, blobs.values()))
    assert len(await locations(store)) == 5 and stray_temps(store) == []


async def test_an_existing_blob_is_reported_and_kept(store: BlobStore, sealed: Sealed) -> None:
    old = sealed("e1", 2000)
    await put(store, "e1", old)
    blobs = {"e0": sealed("e0"), "e1": sealed("e1", 500), "e2": sealed("e2")}
    batch = store.batch(U, NS)
    await receive_all(batch, blobs)
    outcomes = dict(await batch.flush())
    assert isinstance(outcomes["e0"], BlobInfo) and isinstance(outcomes["e2"], BlobInfo)
    assert isinstance(outcomes["e1"], BlobExists)
    assert await read_all(store, "e1") == old  # never overwritten
    assert await store.index.usage(U) == len(old) + len(blobs["e0"]) + len(blobs["e2"])
    assert len(await locations(store)) == 3  # the losing payload was deleted


async def test_quota_ends_the_run_at_the_blob_that_passes_it(
    store: BlobStore, sealed: Sealed
) -> None:
    blobs = {f"q{i}": sealed(f"q{i}", 1000) for i in range(4)}
    size = len(blobs["q0"])
    store.quota = 2 * size + 10
    batch = store.batch(U, NS)
    await receive_all(batch, blobs)
    outcomes = await batch.flush()
    assert [b for b, _ in outcomes] == ["q0", "q1", "q2"]
    assert isinstance(outcomes[2][1], QuotaExceeded)
    assert sorted(await store.index.list_blobs(U, NS)) == ["q0", "q1"]
    assert await store.index.usage(U) == 2 * size
    assert len(await locations(store)) == 2 and stray_temps(store) == []


async def test_bad_blobs_are_refused_on_receipt(store: BlobStore, sealed: Sealed) -> None:
    batch = store.batch(U, NS)
    with pytest.raises(InvalidBlob):
        await batch.receive("x", chunked(b"X" * 3000), 3000)
    with pytest.raises(InvalidBlob):  # its preamble names another blob
        data = sealed("other")
        await batch.receive("y", chunked(data), len(data))
    data = sealed("z")
    with pytest.raises(ProtocolError):  # shorter than announced
        await batch.receive("z", chunked(data), len(data) + 5)
    with pytest.raises(ValueError):
        await batch.receive("big", chunked(b""), BATCH_BLOB_MAX + 1)
    assert len(batch) == 0 and await batch.flush() == []
    assert await locations(store) == set()


async def test_a_batch_removes_tombstones(store: BlobStore, sealed: Sealed) -> None:
    await put(store, "t", sealed("t"))
    await store.delete(U, NS, "t")
    assert await store.index.list_deleted(U, NS) == ["t"]
    batch = store.batch(U, NS)
    await receive_all(batch, {"t": sealed("t", 300)})
    [(_, outcome)] = await batch.flush()
    assert isinstance(outcome, BlobInfo)
    assert await store.index.list_deleted(U, NS) == []


async def test_a_cancelled_flush_still_completes(store: BlobStore, sealed: Sealed) -> None:
    blobs = {f"c{i}": sealed(f"c{i}", 2000) for i in range(3)}
    batch = store.batch(U, NS)
    await receive_all(batch, blobs)
    task = asyncio.ensure_future(batch.flush())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        while store._background:  # close() would wait for them the same way
            await asyncio.sleep(0.01)
    for blob_id, data in blobs.items():
        assert await read_all(store, blob_id) == data
    assert len(await locations(store)) == 3


# FilePayloads.store_many / read_many ------------------------------------------------------


@pytest.fixture
async def files(tmp_path: Path) -> FilePayloads:
    f = FilePayloads(tmp_path / "blobs")
    await f.open()
    return f


async def test_store_many_uses_the_layout_and_reads_back(files: FilePayloads) -> None:
    items = [(f"abcdef{i}", os.urandom(100 + i)) for i in range(3)]
    locs = await files.store_many("alice", "default", items)
    assert locs == ["/".join((*shard_parts("alice", "default", b), b)) for b, _ in items]
    assert await files.read_many(locs) == [d for _, d in items]
    assert os.listdir(os.path.join(files.tmp_root, str(os.getpid()))) == []


async def test_store_many_takes_another_name_beside_a_taken_one(files: FilePayloads) -> None:
    [first] = await files.store_many("alice", "default", [("abcdefgh", b"one")])
    [second] = await files.store_many("alice", "default", [("abcdefgh", b"two")])
    assert second != first and second.startswith(first + "~")
    assert await files.read_many([first, second]) == [b"one", b"two"]


async def test_store_many_leaves_nothing_when_it_fails(files: FilePayloads) -> None:
    # A file where the last blob's shard directory should be: its link fails.
    blocked = Path(files.root, *shard_parts("alice", "default", "zzzzzzzz"))
    blocked.parent.mkdir(parents=True)
    blocked.write_bytes(b"in the way")
    items = [("abcdefgh", b"a"), ("bcdefghi", b"b"), ("zzzzzzzz", b"z")]
    with pytest.raises(OSError):
        await files.store_many("alice", "default", items)
    # Only the obstacle: the two payloads linked before the failure are gone again.
    assert [loc async for loc, _ in files.locations()] == ["alice/default/z/zzz/zzzzzz"]
    assert os.listdir(os.path.join(files.tmp_root, str(os.getpid()))) == []


async def test_store_many_refuses_bad_names(files: FilePayloads) -> None:
    with pytest.raises(ValueError):
        await files.store_many("alice", "default", [("ok", b""), ("../x", b"")])
    assert [loc async for loc, _ in files.locations()] == []


async def test_read_many_of_a_missing_payload(files: FilePayloads) -> None:
    [loc] = await files.store_many("alice", "default", [("abcdefgh", b"x")])
    await files.delete(loc)
    with pytest.raises(BlobNotFound):
        await files.read_many([loc])


async def test_take_checks_and_stores_as_receive_does(store: BlobStore, sealed: Sealed) -> None:
    """``take``, a whole blob in hand (a stream's small blobs): the same refusals as
    ``receive``, and the same rows and bytes once flushed."""
    batch = store.batch(U, NS)
    with pytest.raises(InvalidBlob):
        batch.take("x", b"X" * 3000, 3000)
    with pytest.raises(InvalidBlob):  # its preamble names another blob
        data = sealed("other")
        batch.take("y", data, len(data))
    data = sealed("z")
    with pytest.raises(ProtocolError):  # shorter than announced
        batch.take("z", data, len(data) + 5)
    with pytest.raises(ValueError):
        batch.take("big", b"", BATCH_BLOB_MAX + 1)
    assert len(batch) == 0
    blobs = {f"t{i}": sealed(f"t{i}", 500 * i) for i in range(5)}
    for blob_id, data in blobs.items():
        batch.take(blob_id, data, len(data))
    outcomes = await batch.flush()
    assert [blob_id for blob_id, o in outcomes if isinstance(o, BlobInfo)] == list(blobs)
    for blob_id, data in blobs.items():
        assert await read_all(store, blob_id) == data
        info = await store.index.get_blob(U, NS, blob_id)
        assert info is not None and info.tag == data[-16:]
