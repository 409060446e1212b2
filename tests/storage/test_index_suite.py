"""The index suite: every MetadataIndex (INDEXES in tests/helpers/storage_backends.py:
memory, SQLite, PostgreSQL) runs every test here.

The store under test is the index with memory payloads beneath it (``index_store``): users
and services, id uniqueness, seq order, the exact quota under races, tombstones, listings,
flags and their compare-and-set. What the payload layer does is the payload suite's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from blobsync.server.storage.base import (
    BlobExists,
    BlobInfo,
    BlobNotFound,
    MetadataIndex,
    NewBlob,
    Order,
    PreconditionFailed,
    QuotaExceeded,
    UserExists,
    UserNotFound,
)
from blobsync.server.storage.blobstore import BlobStore
from tests.harness.stores import postgres_index
from tests.helpers.storage import (
    NS,
    Sealed,
    Snapshot,
    U,
    chunked,
    locations,
    put,
    read_all,
)


@pytest.fixture
def store(index_store: BlobStore) -> BlobStore:
    """This suite's store: the index under test over memory payloads."""
    return index_store


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


# listing and flags --------------------------------------------------------------------
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


# SPEC 11: the sealed meta, kept with the row and its put change --------------------------
META_A = "A" * 40  # opaque to the index: any text
META_B = "B" * 4096


async def test_meta_is_kept_with_the_row_and_read_back(store: BlobStore, sealed: Sealed) -> None:
    idx = store.index
    a, b, c = sealed("a"), sealed("b"), sealed("c")
    await put(store, "a", a, meta=META_A)
    await put(store, "c", c)  # no meta: None everywhere
    batch = store.batch(U, NS)
    batch.take("b", b, len(b), META_B)
    batch.take("d", sealed("d"), len(sealed("d")))
    await batch.flush()
    await idx.set_flags(U, NS, "c", frozenset({"PENDING"}))
    assert (await idx.get_blob(U, NS, "a")).meta == META_A  # type: ignore[union-attr]
    assert (await idx.get_blob(U, NS, "c")).meta is None  # type: ignore[union-attr]
    assert {i.blob_id: i.meta for i in await idx.get_blobs(U, NS, ["a", "b", "c"])} == {
        "a": META_A, "b": META_B, "c": None,
    }
    listed = await idx.list_blobs_meta(U, NS, order=Order.OLDEST_FIRST)
    assert [tuple(r) for r in listed] == [
        ("a", len(a), META_A), ("c", len(c), None), ("b", len(b), META_B),
        ("d", len(sealed("d")), None),
    ]
    newest = await idx.list_blobs_meta(U, NS, order=Order.NEWEST_FIRST, limit=2)
    assert [r[0] for r in newest] == ["d", "b"]
    pending = await idx.list_blobs_meta(U, NS, filter_flag="PENDING")
    assert [tuple(r) for r in pending] == [("c", len(c), None)]
    assert await idx.list_blobs_meta(U, "other") == []
    # the plain listing is unchanged
    assert await idx.list_blobs(U, NS, order=Order.OLDEST_FIRST) == ["a", "c", "b", "d"]
    # the meta is not shown where a row is printed (logs)
    assert META_A not in repr(await idx.get_blob(U, NS, "a"))


async def test_meta_rides_on_the_put_change_only(store: BlobStore, sealed: Sealed) -> None:
    idx = store.index
    await put(store, "a", sealed("a"), meta=META_A)
    await idx.insert_blobs(U, NS, [NewBlob("b", 5, b"t" * 16, "loc-b", meta=META_B),
                                   NewBlob("c", 5, b"t" * 16, "loc-c")])
    await idx.set_flags(U, NS, "a", frozenset({"FAILED"}))
    await store.delete(U, NS, "a")
    page = await idx.read_changes(U, None, 100)
    assert [(c.blob_id, c.op, c.meta) for c in page.changes] == [
        ("a", "put", META_A), ("b", "put", META_B), ("c", "put", None),
        ("a", "flags", None), ("a", "delete", None),
    ]
    # the id created again under another meta: each put change keeps its own
    await put(store, "a", sealed("a"), meta=META_B)
    page = await idx.read_changes(U, page.position, 100)
    assert [(c.blob_id, c.op, c.meta) for c in page.changes] == [("a", "put", META_B)]


async def test_meta_with_the_quota_path(store: BlobStore, sealed: Sealed) -> None:
    store.quota = 10_000
    idx = store.index
    out = await idx.insert_blobs(U, NS, [NewBlob("q1", 5, b"t" * 16, "loc-1", meta=META_A),
                                         NewBlob("q2", 5, b"t" * 16, "loc-2")], quota=10_000)
    assert [o.meta for o in out] == [META_A, None]  # type: ignore[union-attr]
    one = await idx.insert_blob(U, NS, NewBlob("q3", 5, b"t" * 16, "loc-3", meta=META_B),
                                quota=10_000)
    assert one.meta == META_B
    assert {i.blob_id: i.meta for i in await idx.get_blobs(U, NS, ["q1", "q2", "q3"])} == {
        "q1": META_A, "q2": None, "q3": META_B,
    }
    changes = (await idx.read_changes(U, None, 10)).changes
    assert [c.meta for c in changes] == [META_A, None, META_B]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_meta_migration_keeps_old_rows_without_meta(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An index made by the schema before SPEC 11 opens with its rows, metas NULL."""
    index: MetadataIndex
    if kind == "sqlite":
        from blobsync.server.storage import sqlite as sq

        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path)
        with conn:
            for sql in [s for step in sq.MIGRATIONS[:2] for s in step]:
                conn.execute(sql)
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (2)")
            conn.execute("INSERT INTO blobs (user, namespace, blob_id, size, tag, location, "
                         "flags, created) VALUES (?, ?, 'old', 7, ?, 'loc', 0, 0)",
                         (U, NS, b"t" * 16))
            conn.execute("INSERT INTO changes (user, namespace, blob_id, op, size, tag, flags, "
                         "created) VALUES (?, ?, 'old', 'put', 7, ?, 0, 0)", (U, NS, b"t" * 16))
        conn.close()
        index = sq.SQLiteIndex(path)
    else:
        import asyncpg

        from blobsync.server.storage import postgres as pg

        index = await postgres_index(request)
        pconn = await asyncpg.connect(index.dsn)
        try:
            assert await pg.migrate(pconn, pg.MIGRATIONS[:3]) == 3
            await pconn.execute("INSERT INTO blobs (user_id, namespace, blob_id, size, tag, "
                                "location) VALUES ($1, $2, 'old', 7, $3, 'loc')",
                                U, NS, b"t" * 16)
            await pconn.execute("INSERT INTO changes (user_id, namespace, blob_id, op, size, "
                                "tag, flags) VALUES ($1, $2, 'old', 'put', 7, $3, '{}')",
                                U, NS, b"t" * 16)
        finally:
            await pconn.close()
    await index.open()
    try:
        assert (await index.get_blob(U, NS, "old")).meta is None  # type: ignore[union-attr]
        assert [tuple(r) for r in await index.list_blobs_meta(U, NS)] == [("old", 7, None)]
        assert [c.meta for c in (await index.read_changes(U, None, 10)).changes] == [None]
        await index.insert_blob(U, NS, NewBlob("new", 3, b"t" * 16, "loc-n", meta=META_A))
        assert (await index.get_blob(U, NS, "new")).meta == META_A  # type: ignore[union-attr]
    finally:
        await index.close()
