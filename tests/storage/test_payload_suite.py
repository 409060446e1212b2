"""The payload suite: every PayloadStore (PAYLOADS in tests/helpers/storage_backends.py:
memory, files, SQLite payloads, tiered, S3) runs every test here.

The store under test is the payload store under a memory index (``payload_store``):
streaming in without a size, every refusal of a put (bad head, wrong length, too big, a
dropped connection, a cancel) leaving no payload nor temp behind, external blobs, ranged
and bounded reads, and distinct locations per writer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from blobsync.format import InvalidBlob, LimitExceeded, ProtocolError, seal, seal_external
from blobsync.format.limits import CHUNK_SIZE
from blobsync.server.storage.base import (
    READ_PIECE_MAX,
    BlobNotFound,
)
from blobsync.server.storage.blobstore import BlobStore
from tests.helpers.storage import (
    NS,
    Sealed,
    Snapshot,
    U,
    chunked,
    locations,
    put,
    read_all,
    stray_temps,
)


@pytest.fixture
def store(payload_store: BlobStore) -> BlobStore:
    """This suite's store: the payload store under test under a memory index."""
    return payload_store


# writing ------------------------------------------------------------------------------
async def test_put_without_size(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("b1", 10_000)
    info = await store.put(U, NS, "b1", chunked(data, size=777))
    assert info.size == len(data)
    assert await read_all(store, "b1") == data


# put validation: every refusal leaves nothing -----------------------------------------
async def test_garbled_head_is_invalid_blob(store: BlobStore, sealed: Sealed) -> None:
    snap = await Snapshot(store).take()
    data = bytearray(sealed("g", 5000))
    data[10] = ord("!")  # not base64url
    with pytest.raises(InvalidBlob):
        await put(store, "g", bytes(data))
    await snap.assert_unchanged("g")
    with pytest.raises(InvalidBlob):
        await put(store, "g", b"x" * 5000)
    await snap.assert_unchanged("g")


async def test_head_naming_another_id_is_invalid_blob(store: BlobStore, sealed: Sealed) -> None:
    snap = await Snapshot(store).take()
    with pytest.raises(InvalidBlob):
        await put(store, "mine", sealed("theirs", 5000))
    await snap.assert_unchanged("mine")


async def test_blob_shorter_than_its_head(store: BlobStore, sealed: Sealed) -> None:
    snap = await Snapshot(store).take()
    data = sealed("s", 100)
    with pytest.raises(InvalidBlob):
        await put(store, "s", data[:500])
    with pytest.raises(InvalidBlob):
        await put(store, "s", data[:737 + 5])  # a head, but no room for a tag
    with pytest.raises(InvalidBlob):
        await put(store, "s", b"")
    await snap.assert_unchanged("s")


async def test_wrong_length_is_protocol_error(store: BlobStore, sealed: Sealed) -> None:
    snap = await Snapshot(store).take()
    data = sealed("w", 5000)
    with pytest.raises(ProtocolError) as short:
        await put(store, "w", data, size=len(data) + 1)
    with pytest.raises(ProtocolError) as long:
        await put(store, "w", data, size=len(data) - 1)
    for exc in (short, long):
        assert exc.type is ProtocolError and exc.value.status_hint == 400
    await snap.assert_unchanged("w")


async def test_over_max_blob_size(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("big", 50_000)
    store.max_blob_size = len(data) - 1
    snap = await Snapshot(store).take()
    with pytest.raises(LimitExceeded) as announced:
        await put(store, "big", data)
    assert announced.value.status_hint == 413
    await snap.assert_unchanged("big")
    consumed = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal consumed
        async for c in chunked(data, size=1000):
            consumed += len(c)
            yield c

    store.max_blob_size = len(data) // 2
    with pytest.raises(LimitExceeded):
        await store.put(U, NS, "big", counting())
    assert consumed < len(data) // 2 + 1000  # refused while streaming, not after
    await snap.assert_unchanged("big")
    store.max_blob_size = len(data)
    await put(store, "big", data)
    assert await read_all(store, "big") == data


async def test_dropped_connection_leaves_nothing(store: BlobStore, sealed: Sealed) -> None:
    await put(store, "kept", sealed("kept"))
    snap = await Snapshot(store).take()
    data = sealed("d", 5 * CHUNK_SIZE)
    with pytest.raises(ConnectionResetError):
        await store.put(U, NS, "d", chunked(data, size=CHUNK_SIZE, fail_after=3), size=len(data))
    await snap.assert_unchanged("d")
    await put(store, "d", data)  # and the id is free for the retry
    assert await read_all(store, "d") == data


async def test_cancelled_put_leaves_nothing(store: BlobStore, sealed: Sealed) -> None:
    snap = await Snapshot(store).take()
    data = sealed("c", 5 * CHUNK_SIZE)
    progressed = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        async for c in chunked(data, size=CHUNK_SIZE):
            yield c
            progressed.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(store.put(U, NS, "c", slow(), size=len(data)))
    await progressed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # let an interrupted thread job finish its cleanup
    await snap.assert_unchanged("c")


async def test_external_blob(store: BlobStore) -> None:
    payload = os.urandom(3000)
    good = seal_external("ext", len(payload)) + payload
    info = await put(store, "ext", good, ns="MX", flags=frozenset({"PENDING"}))
    assert info.size == len(good)
    assert await read_all(store, "ext", ns="MX") == good
    snap = await Snapshot(store).take()
    with pytest.raises(InvalidBlob):  # payload size differs from the preamble's
        await put(store, "ext2", seal_external("ext2", len(payload) + 1) + payload)
    await snap.assert_unchanged("ext2")


# reading ------------------------------------------------------------------------------
async def test_read_ranges(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("r", 2 * CHUNK_SIZE + 1000)
    await put(store, "r", data)
    n = len(data)
    cases = [
        (0, None), (0, 1), (5, 10), (CHUNK_SIZE - 3, 7), (CHUNK_SIZE, CHUNK_SIZE + 3),
        (n - 16, None), (n - 1, 1), (n - 5, 100), (100, 0), (n, None), (n + 10, 5),
    ]
    for offset, length in cases:
        want = data[offset:] if length is None else data[offset : offset + length]
        assert await read_all(store, "r", offset=offset, length=length) == want, (offset, length)


async def test_read_streams_in_bounded_pieces(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("big", 2 * READ_PIECE_MAX + 5)
    await put(store, "big", data)
    _, chunks = await store.read(U, NS, "big")
    pieces = [c async for c in chunks]
    assert b"".join(pieces) == data
    assert len(pieces) > 2 and max(len(p) for p in pieces) <= READ_PIECE_MAX


async def test_reader_abandoned_midway(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("r", 4 * CHUNK_SIZE)
    await put(store, "r", data)
    _, chunks = await store.read(U, NS, "r")
    first = await anext(chunks)
    assert first == data[: len(first)]
    await chunks.aclose()  # type: ignore[attr-defined]
    await store.delete(U, NS, "r")
    assert await locations(store) == set()


async def test_payload_deleted_under_the_index_is_not_found(
    store: BlobStore, sealed: Sealed
) -> None:
    info = await put(store, "v", sealed("v"))
    await store.payloads.delete(info.location)  # the other half of a concurrent delete
    with pytest.raises(BlobNotFound):
        await store.read(U, NS, "v")


# writers ------------------------------------------------------------------------------
async def test_writers_of_one_id_get_distinct_locations(store: BlobStore) -> None:
    w1 = await store.payloads.writer(U, NS, "x")
    w2 = await store.payloads.writer(U, NS, "x")
    await w1.write(b"one")
    await w2.write(b"two")
    loc1, loc2 = await w1.commit(), await w2.commit()
    assert loc1 != loc2
    assert b"".join([c async for c in store.payloads.read(loc1)]) == b"one"
    assert b"".join([c async for c in store.payloads.read(loc2)]) == b"two"
    w3 = await store.payloads.writer(U, NS, "y")
    await w3.write(b"three")
    await w3.abort()
    assert await locations(store) == {loc1, loc2}
    assert stray_temps(store) == []
    with pytest.raises(BlobNotFound):
        async for _ in store.payloads.read(f"{U}/{NS}/n/nop/nope/nope"):
            pass


def test_sealed_fixture_is_real(sealed: Sealed, secret: bytes) -> None:
    from blobsync.format import open_sealed

    blob = sealed("z", 10)
    assert len(open_sealed(secret, "z", blob)) == 10
    assert seal(secret, "z", b"") != seal(secret, "z", b"")  # random iv
