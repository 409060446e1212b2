"""The shared storage suite: every backend in conftest.BACKENDS runs every test here."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest

from blobsync.format import InvalidBlob, LimitExceeded, ProtocolError, seal, seal_external
from blobsync.format.limits import CHUNK_SIZE
from blobsync.server.storage.base import (
    READ_PIECE_MAX,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    NewBlob,
    Order,
    PreconditionFailed,
    QuotaExceeded,
    UserExists,
    UserNotFound,
)
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


# users and services -------------------------------------------------------------------
async def test_users_crud(store: BlobStore) -> None:
    idx = store.index
    assert await idx.get_user("bob") is None
    await idx.add_user("bob", "h1")
    await idx.add_user("alice", "h2")
    with pytest.raises(UserExists):
        await idx.add_user("bob", "other")
    assert (await idx.get_user("bob")).token_hash == "h1"  # type: ignore[union-attr]
    await idx.set_user_token("bob", "h3")
    assert (await idx.get_user("bob")).token_hash == "h3"  # type: ignore[union-attr]
    with pytest.raises(UserNotFound):
        await idx.set_user_token("carol", "x")
    assert [p.name for p in await idx.list_users()] == ["alice", "bob"]
    await idx.remove_user("bob")
    assert await idx.get_user("bob") is None
    with pytest.raises(UserNotFound):
        await idx.remove_user("bob")
    assert [p.name for p in await idx.list_users()] == ["alice"]


async def test_remove_user_drops_its_rows(store: BlobStore, sealed: Sealed) -> None:
    await store.index.add_user(U, "h")
    await store.index.add_user("bob", "h")
    await put(store, "a", sealed("a"))
    await put(store, "b", sealed("b"))
    await store.delete(U, NS, "b")
    await put(store, "a", sealed("a"), user="bob")
    await store.index.remove_user(U)
    assert await store.index.get_blob(U, NS, "a") is None
    assert await store.index.list_blobs(U, NS) == []
    assert await store.index.list_deleted(U, NS) == []
    assert await store.index.usage(U) == 0
    assert await store.index.list_blobs("bob", NS) == ["a"]
    # the payload is an orphan now, and gc takes it
    assert await store.gc(0) == 1
    assert await read_all(store, "a", user="bob")


async def test_services_crud(store: BlobStore) -> None:
    idx = store.index
    assert await idx.get_service("incoming") is None
    await idx.add_service("incoming", "h1")
    await idx.add_service("incoming", "h2")  # replaces
    await idx.add_service("backup", "h3")
    assert (await idx.get_service("incoming")).token_hash == "h2"  # type: ignore[union-attr]
    assert [(p.name, p.token_hash) for p in await idx.list_services()] == [
        ("backup", "h3"),
        ("incoming", "h2"),
    ]
    await idx.remove_service("backup")
    with pytest.raises(UserNotFound):
        await idx.remove_service("backup")
    assert [p.name for p in await idx.list_services()] == ["incoming"]


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


async def test_put_without_size(store: BlobStore, sealed: Sealed) -> None:
    data = sealed("b1", 10_000)
    info = await store.put(U, NS, "b1", chunked(data, size=777))
    assert info.size == len(data)
    assert await read_all(store, "b1") == data


async def test_duplicate_put_is_blob_exists(store: BlobStore, sealed: Sealed) -> None:
    first = sealed("b1")
    await put(store, "b1", first)
    snap = await Snapshot(store).take()
    with pytest.raises(BlobExists):
        await put(store, "b1", sealed("b1"))
    # the index re-checks too, for racers that passed the early check
    with pytest.raises(BlobExists):
        await store.index.insert_blob(U, NS, NewBlob("b1", 10, b"t" * 16, "elsewhere"))
    assert await read_all(store, "b1") == first
    assert await locations(store) == snap.locations
    assert await store.index.usage(U) == snap.usage


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


async def test_seq_increases_in_stored_order(store: BlobStore, sealed: Sealed) -> None:
    seqs = [(await put(store, f"b{i}", sealed(f"b{i}", 1))).seq for i in range(5)]
    seqs.append((await put(store, "x", sealed("x", 1), ns="other")).seq)
    seqs.append((await put(store, "y", sealed("y", 1), user="bob")).seq)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_get_blobs_in_order_asked(store: BlobStore, sealed: Sealed) -> None:
    for bid in ("a", "b", "c"):
        await put(store, bid, sealed(bid))
    got = await store.index.get_blobs(U, NS, ["c", "missing", "a", "b"])
    assert [i.blob_id for i in got] == ["c", "a", "b"]
    assert await store.index.get_blobs(U, "other", ["a"]) == []


# quota --------------------------------------------------------------------------------
async def test_quota_is_exact(store: BlobStore, sealed: Sealed) -> None:
    a, b, c = sealed("a", 1000), sealed("b", 1000), sealed("c", 1000)
    store.quota = len(a) + len(b)  # exactly two blobs
    await put(store, "a", a)
    await put(store, "b", b)  # reaches the quota, does not pass it
    assert await store.index.usage(U) == store.quota

    snap = await Snapshot(store).take()
    with pytest.raises(QuotaExceeded):
        await put(store, "c", c)  # size known: refused before storing
    await snap.assert_unchanged("c")
    with pytest.raises(QuotaExceeded):
        await store.put(U, NS, "c", chunked(c))  # size unknown: refused by the index
    await snap.assert_unchanged("c")
    with pytest.raises(QuotaExceeded):
        await store.index.insert_blob(
            U, NS, NewBlob("c", 1, b"t" * 16, "nowhere"), quota=store.quota,
        )
    await snap.assert_unchanged("c")

    await store.delete(U, NS, "a")
    assert await store.index.usage(U) == len(b)
    await put(store, "c", c)
    assert await store.index.usage(U) == len(b) + len(c)
    # quota is per user
    await put(store, "a", a, user="bob")
    assert await store.index.usage("bob") == len(a)


async def test_quota_race_lets_exactly_what_fits(store: BlobStore, sealed: Sealed) -> None:
    bodies = {f"q{i}": sealed(f"q{i}", 500) for i in range(8)}
    size = len(next(iter(bodies.values())))
    store.quota = 3 * size
    results = await asyncio.gather(
        *(
            store.put(U, NS, bid, chunked(b, size=400, pause=0.001), size=len(b))
            for bid, b in bodies.items()
        ),
        return_exceptions=True,
    )
    stored = [r for r in results if isinstance(r, BlobInfo)]
    assert len(stored) == 3
    assert all(isinstance(r, QuotaExceeded) for r in results if not isinstance(r, BlobInfo))
    assert await store.index.usage(U) == 3 * size
    assert await locations(store) == {r.location for r in stored}


async def test_existing_id_is_blob_exists_before_quota(store: BlobStore, sealed: Sealed) -> None:
    """An id that exists AND whose size would pass the quota is BlobExists (409) on every
    backend, alone or in a batch: the id is checked before the quota (SPEC 9's order)."""
    a = sealed("a", 1000)
    info = await put(store, "a", a)
    store.quota = len(a) + 10  # any second blob of this size passes the quota
    tag = b"t" * 16
    with pytest.raises(BlobExists):
        await store.index.insert_blob(
            U, NS, NewBlob("a", len(a), tag, "nowhere"), quota=store.quota,
        )
    outcomes = await store.index.insert_blobs(
        U, NS, [NewBlob("a", len(a), tag, "nowhere"), NewBlob("n", 5, tag, "nowhere-n")],
        quota=store.quota,
    )
    assert [type(o) for o in outcomes] == [BlobExists, BlobInfo]
    await store.index.delete_blob(U, NS, "n")  # its payload was never stored
    # The same through a stream upload's batch, payloads and all.
    batch = store.batch(U, NS)
    await batch.receive("a", chunked(a), len(a))
    got = await batch.flush()
    assert [(b, type(o)) for b, o in got] == [("a", BlobExists)]
    assert await store.index.get_blob(U, NS, "a") == info
    assert await store.index.usage(U) == len(a)
    assert await locations(store) == {info.location}


# tombstones ---------------------------------------------------------------------------
async def test_tombstones(store: BlobStore, sealed: Sealed) -> None:
    for bid in ("a", "b", "c"):
        await put(store, bid, sealed(bid))
    await store.delete(U, NS, "a")
    await store.delete(U, NS, "b")
    assert await store.index.list_deleted(U, NS) == ["a", "b"]
    assert await store.index.list_deleted(U, "other") == []
    await put(store, "a", sealed("a"))  # re-creation removes the tombstone
    assert await store.index.list_deleted(U, NS) == ["b"]
    await store.delete(U, NS, "a")  # deleted again: now the newest deletion
    assert await store.index.list_deleted(U, NS) == ["b", "a"]
    assert await store.index.list_blobs(U, NS) == ["c"]


# listing ------------------------------------------------------------------------------
async def test_listing(store: BlobStore, sealed: Sealed) -> None:
    flags = {
        "m1": {"PENDING"},
        "m2": set(),
        "m3": {"PENDING", "FAILED"},
        "m4": {"PROCESSED"},
        "m5": {"PENDING"},
    }
    order = ["m3", "m1", "m5", "m2", "m4"]  # stored order differs from name order
    for bid in order:
        await put(store, bid, sealed(bid, 1), flags=frozenset(flags[bid]))
    idx = store.index
    assert await idx.list_blobs(U, NS, order=Order.OLDEST_FIRST) == order
    assert await idx.list_blobs(U, NS, order=Order.NEWEST_FIRST) == order[::-1]
    assert sorted(await idx.list_blobs(U, NS)) == sorted(order)
    assert await idx.list_blobs(U, NS, order=Order.OLDEST_FIRST, limit=2) == order[:2]
    assert await idx.list_blobs(U, NS, order=Order.NEWEST_FIRST, limit=2) == ["m4", "m2"]
    assert await idx.list_blobs(U, NS, order=Order.OLDEST_FIRST, limit=0) == []
    assert await idx.list_blobs(U, NS, filter_flag="PENDING", order=Order.OLDEST_FIRST) == [
        "m3", "m1", "m5"
    ]
    assert await idx.list_blobs(
        U, NS, filter_flag="PENDING", order=Order.NEWEST_FIRST, limit=2
    ) == ["m5", "m1"]
    assert await idx.list_blobs(U, NS, filter_flag="PROCESSING") == []
    assert await idx.count_blobs(U, NS) == 5
    assert await idx.count_blobs(U, NS, filter_flag="PENDING") == 3
    assert await idx.count_blobs(U, NS, filter_flag="FAILED") == 1

    # the same id in another namespace and for another user is another blob
    await put(store, "m1", sealed("m1", 1), ns="MX", flags=frozenset({"FAILED"}))
    await put(store, "zz", sealed("zz", 1), user="bob")
    assert await idx.list_blobs(U, "MX") == ["m1"]
    assert await idx.count_blobs(U, NS) == 5
    assert await idx.list_blobs(U, NS, filter_flag="FAILED") == ["m3"]
    assert await idx.list_blobs("bob", NS) == ["zz"]
    assert await idx.list_blobs("bob", "MX") == []
    assert await idx.count_blobs("carol", NS) == 0
    assert (await idx.get_blob(U, NS, "m1")).flags == {"PENDING"}  # type: ignore[union-attr]
    await store.delete(U, "MX", "m1")
    assert await idx.get_blob(U, NS, "m1") is not None
    assert await idx.list_deleted(U, NS) == []


async def test_set_flags_with_expect(store: BlobStore, sealed: Sealed) -> None:
    idx = store.index
    await put(store, "m", sealed("m"), flags=frozenset({"PENDING"}))
    await idx.set_flags(U, NS, "m", frozenset({"PROCESSING"}), expect="PENDING")
    assert (await idx.get_blob(U, NS, "m")).flags == {"PROCESSING"}  # type: ignore[union-attr]
    with pytest.raises(PreconditionFailed):  # another device already took it: 412
        await idx.set_flags(U, NS, "m", frozenset({"PROCESSING"}), expect="PENDING")
    assert (await idx.get_blob(U, NS, "m")).flags == {"PROCESSING"}  # type: ignore[union-attr]
    await idx.set_flags(U, NS, "m", frozenset({"PROCESSED", "FAILED"}))
    assert (await idx.get_blob(U, NS, "m")).flags == {  # type: ignore[union-attr]
        "PROCESSED", "FAILED"
    }
    assert await idx.list_blobs(U, NS, filter_flag="PROCESSING") == []
    assert await idx.list_blobs(U, NS, filter_flag="FAILED") == ["m"]
    await idx.set_flags(U, NS, "m", frozenset())
    assert await idx.count_blobs(U, NS, filter_flag="FAILED") == 0
    with pytest.raises(BlobNotFound):
        await idx.set_flags(U, NS, "nope", frozenset({"PENDING"}))
    with pytest.raises(BlobNotFound):
        await idx.set_flags(U, NS, "nope", frozenset(), expect="PENDING")


async def test_concurrent_reservation_has_one_winner(store: BlobStore, sealed: Sealed) -> None:
    await put(store, "m", sealed("m"), flags=frozenset({"PENDING"}))
    results = await asyncio.gather(
        *(
            store.index.set_flags(U, NS, "m", frozenset({"PROCESSING"}), expect="PENDING")
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, PreconditionFailed) for r in results) == 7


# put validation: every refusal leaves nothing ------------------------------------------
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
