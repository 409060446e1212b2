"""PostgresIndex against a real PostgreSQL: the contract, and what only a database can do.

Two PostgresIndex instances on one database have two connection pools: they stand for two
server processes, so races between them are races between processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from blobsync.server.storage.base import (
    BlobExists,
    BlobNotFound,
    NewBlob,
    Order,
    PreconditionFailed,
    QuotaExceeded,
    StorageError,
    UserExists,
    UserNotFound,
)
from blobsync.server.storage.postgres import (
    LIST_DELETED_QUERY,
    MIGRATIONS,
    DatabaseUnavailable,
    PostgresIndex,
    SchemaTooNew,
    count_query,
    list_query,
    migrate,
    redact_dsn,
)

TAG = bytes(range(16))


@pytest.fixture
async def index(postgres_db: str) -> AsyncIterator[PostgresIndex]:
    idx = PostgresIndex(postgres_db, max_size=20)
    await idx.open()
    try:
        yield idx
    finally:
        await idx.close()


@pytest.fixture
async def other(postgres_db: str, index: PostgresIndex) -> AsyncIterator[PostgresIndex]:
    """A second "process" on the same database."""
    idx = PostgresIndex(postgres_db, max_size=20)
    await idx.open()
    try:
        yield idx
    finally:
        await idx.close()


async def put(
    idx: PostgresIndex,
    blob_id: str,
    *,
    user: str = "alice",
    ns: str = "default",
    size: int = 10,
    flags: frozenset[str] = frozenset(),
    quota: int = 0,
) -> None:
    await idx.insert_blob(
        user, ns, NewBlob(blob_id, size, TAG, f"loc/{blob_id}", flags), quota=quota,
    )


async def test_users_and_services(index: PostgresIndex) -> None:
    await index.add_user("bob", "h1")
    await index.add_user("alice", "h2")
    with pytest.raises(UserExists):
        await index.add_user("bob", "h3")
    await index.set_user_token("bob", "h4")
    with pytest.raises(UserNotFound):
        await index.set_user_token("carol", "h")
    user = await index.get_user("bob")
    assert user is not None and (user.name, user.token_hash) == ("bob", "h4")
    assert await index.get_user("carol") is None
    assert [p.name for p in await index.list_users()] == ["alice", "bob"]

    await index.add_service("incoming", "s1")
    await index.add_service("incoming", "s2")  # replaces the token
    await index.add_service("backup", "s3")
    service = await index.get_service("incoming")
    assert service is not None and service.token_hash == "s2"
    assert [p.name for p in await index.list_services()] == ["backup", "incoming"]
    await index.remove_service("backup")
    with pytest.raises(UserNotFound):
        await index.remove_service("backup")
    assert await index.get_service("backup") is None


async def test_remove_user_takes_its_rows(index: PostgresIndex) -> None:
    await index.add_user("alice", "h")
    await index.add_user("bob", "h")
    await put(index, "a1")
    await put(index, "a2")
    await index.delete_blob("alice", "default", "a2")
    await put(index, "b1", user="bob")
    await index.remove_user("alice")
    assert await index.get_blob("alice", "default", "a1") is None
    assert await index.list_deleted("alice", "default") == []
    assert await index.usage("alice") == 0
    assert await index.all_locations() == {"loc/b1"}
    with pytest.raises(UserNotFound):
        await index.remove_user("alice")


async def test_blob_roundtrip_usage_and_tombstones(index: PostgresIndex) -> None:
    info = await index.insert_blob(
        "alice", "default", NewBlob("b1", 1234, TAG, "loc/1", frozenset({"PENDING"})),
    )
    assert (info.user, info.namespace, info.blob_id, info.size) == ("alice", "default", "b1", 1234)
    assert info.tag == TAG and info.flags == {"PENDING"} and info.location == "loc/1"
    assert await index.get_blob("alice", "default", "b1") == info
    assert await index.get_blob("alice", "other", "b1") is None
    assert await index.usage("alice") == 1234
    with pytest.raises(BlobExists):
        await index.insert_blob("alice", "default", NewBlob("b1", 1, TAG, "loc/2"))
    assert await index.usage("alice") == 1234  # the refused insert counted nothing

    deleted = await index.delete_blob("alice", "default", "b1")
    assert deleted == info
    assert await index.usage("alice") == 0
    assert await index.list_deleted("alice", "default") == ["b1"]
    with pytest.raises(BlobNotFound):
        await index.delete_blob("alice", "default", "b1")

    # Re-creating removes the tombstone; a later deletion is the newest one.
    await put(index, "b2")
    await index.delete_blob("alice", "default", "b2")
    again = await index.insert_blob("alice", "default", NewBlob("b1", 5, TAG, "loc/3"))
    assert again.seq > info.seq
    assert await index.list_deleted("alice", "default") == ["b2"]
    await index.delete_blob("alice", "default", "b1")
    assert await index.list_deleted("alice", "default") == ["b2", "b1"]
    assert await index.list_deleted("alice", "other") == []


async def test_listing_order_filter_limit_count(index: PostgresIndex) -> None:
    ids = [f"id{n:02d}" for n in range(12)]
    for n, blob_id in enumerate(ids):
        await put(index, blob_id, flags=frozenset({"PENDING"}) if n % 3 == 0 else frozenset())
    await put(index, "elsewhere", ns="MX", flags=frozenset({"PENDING"}))
    await put(index, "bobs", user="bob")

    assert sorted(await index.list_blobs("alice", "default")) == ids
    assert await index.list_blobs("alice", "default", order=Order.OLDEST_FIRST) == ids
    assert await index.list_blobs("alice", "default", order=Order.NEWEST_FIRST) == ids[::-1]
    pending = ids[0::3]
    assert (
        await index.list_blobs("alice", "default", filter_flag="PENDING", order=Order.OLDEST_FIRST)
        == pending
    )
    assert (
        await index.list_blobs(
            "alice", "default", filter_flag="PENDING", order=Order.NEWEST_FIRST, limit=2
        )
        == pending[::-1][:2]
    )
    assert await index.list_blobs("alice", "default", order=Order.OLDEST_FIRST, limit=3) == ids[:3]
    assert await index.list_blobs("alice", "default", limit=0) == []
    assert await index.list_blobs("alice", "default", filter_flag="FAILED") == []
    assert await index.list_blobs("alice", "default", filter_flag="NOPE") == []
    assert await index.count_blobs("alice", "default") == 12
    assert await index.count_blobs("alice", "default", filter_flag="PENDING") == 4
    assert await index.count_blobs("alice", "MX") == 1
    assert await index.count_blobs("carol", "default") == 0

    # Flags change what the filter finds.
    await index.set_flags("alice", "default", "id00", frozenset({"PROCESSED"}))
    assert await index.count_blobs("alice", "default", filter_flag="PENDING") == 3
    assert await index.list_blobs("alice", "default", filter_flag="PROCESSED") == ["id00"]


async def test_get_blobs_in_the_order_asked(index: PostgresIndex) -> None:
    for blob_id in ("a", "b", "c"):
        await put(index, blob_id)
    got = await index.get_blobs("alice", "default", ["c", "missing", "a", "c"])
    assert [i.blob_id for i in got] == ["c", "a", "c"]
    assert await index.get_blobs("alice", "default", []) == []
    assert await index.get_blobs("alice", "MX", ["a"]) == []


async def test_set_flags_and_expect(index: PostgresIndex) -> None:
    await put(index, "m", flags=frozenset({"PENDING"}))
    with pytest.raises(BlobNotFound):
        await index.set_flags("alice", "default", "nope", frozenset({"FAILED"}))
    with pytest.raises(BlobNotFound):
        await index.set_flags("alice", "default", "nope", frozenset(), expect="PENDING")
    with pytest.raises(PreconditionFailed):
        await index.set_flags("alice", "default", "m", frozenset({"FAILED"}), expect="PROCESSING")
    await index.set_flags("alice", "default", "m", frozenset({"PROCESSING"}), expect="PENDING")
    info = await index.get_blob("alice", "default", "m")
    assert info is not None and info.flags == {"PROCESSING"}
    await index.set_flags("alice", "default", "m", frozenset())
    info = await index.get_blob("alice", "default", "m")
    assert info is not None and info.flags == frozenset()


async def test_one_id_sixteen_concurrent_inserts_one_wins(
    index: PostgresIndex, other: PostgresIndex
) -> None:
    async def attempt(n: int) -> str | None:
        idx = index if n % 2 else other
        try:
            await idx.insert_blob("alice", "default", NewBlob("same", 100, TAG, f"loc/{n}"))
        except BlobExists:
            return None
        return f"loc/{n}"

    results = await asyncio.gather(*(attempt(n) for n in range(16)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    info = await index.get_blob("alice", "default", "same")
    assert info is not None and info.location == winners[0]
    assert await index.usage("alice") == 100  # counted once
    assert await other.all_locations() == {winners[0]}


async def test_quota_exact_across_two_processes(index: PostgresIndex, other: PostgresIndex) -> None:
    size, quota = 1000, 10_500  # room for exactly ten

    async def attempt(n: int) -> bool:
        idx = index if n % 2 else other
        try:
            await idx.insert_blob(
                "alice", "default", NewBlob(f"q{n}", size, TAG, f"loc/{n}"), quota=quota,
            )
        except QuotaExceeded:
            return False
        return True

    results = await asyncio.gather(*(attempt(n) for n in range(40)))
    assert sum(results) == 10
    assert await index.usage("alice") == 10 * size
    assert await other.count_blobs("alice", "default") == 10
    # A deletion frees room for exactly one more.
    stored = await index.list_blobs("alice", "default")
    await other.delete_blob("alice", "default", stored[0])
    await index.insert_blob("alice", "default", NewBlob("late", size, TAG, "loc/late"), quota=quota)
    with pytest.raises(QuotaExceeded):
        await other.insert_blob(
            "alice", "default", NewBlob("later", size, TAG, "loc/x"), quota=quota,
        )
    # Quota 0 is unlimited, and another user's usage is separate.
    await put(index, "big", size=10**12, quota=0)
    await put(index, "b", user="bob", size=size, quota=quota)
    assert await index.usage("bob") == size


async def test_expect_is_atomic_across_processes(
    index: PostgresIndex, other: PostgresIndex
) -> None:
    await put(index, "msg", ns="MX", flags=frozenset({"PENDING"}))

    async def reserve(n: int) -> bool:
        idx = index if n % 2 else other
        try:
            await idx.set_flags("alice", "MX", "msg", frozenset({"PROCESSING"}), expect="PENDING")
        except PreconditionFailed:
            return False
        return True

    results = await asyncio.gather(*(reserve(n) for n in range(16)))
    assert sum(results) == 1
    info = await other.get_blob("alice", "MX", "msg")
    assert info is not None and info.flags == {"PROCESSING"}


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["version"] for r in await conn.fetch("SELECT version FROM schema_version")]
    finally:
        await conn.close()


async def test_migrations_once_when_many_start_at_once(postgres_db: str) -> None:
    indexes = [PostgresIndex(postgres_db, max_size=2) for _ in range(8)]
    await asyncio.gather(*(idx.open() for idx in indexes))
    try:
        assert await _versions(postgres_db) == list(range(1, len(MIGRATIONS) + 1))
        await put(indexes[0], "x")
        assert await indexes[7].get_blob("alice", "default", "x") is not None
    finally:
        await asyncio.gather(*(idx.close() for idx in indexes))
    # Opening again migrates nothing and keeps the data.
    idx = PostgresIndex(postgres_db)
    await idx.open()
    try:
        assert await idx.get_blob("alice", "default", "x") is not None
    finally:
        await idx.close()
    assert await _versions(postgres_db) == list(range(1, len(MIGRATIONS) + 1))


async def test_a_new_migration_applies_once_over_existing_data(postgres_db: str) -> None:
    idx = PostgresIndex(postgres_db)
    await idx.open()
    await put(idx, "kept")
    await idx.close()
    upgraded = [*MIGRATIONS, "ALTER TABLE blobs ADD COLUMN note text"]
    conns = [await asyncpg.connect(postgres_db) for _ in range(4)]
    try:
        done = await asyncio.gather(*(migrate(c, upgraded) for c in conns))
        assert done == [len(upgraded)] * 4
        # Run twice: a second ALTER would fail, so this proves it is skipped.
        assert await migrate(conns[0], upgraded) == len(upgraded)
        assert await conns[0].fetchval("SELECT count(*) FROM blobs WHERE note IS NULL") == 1
    finally:
        for c in conns:
            await c.close()
    assert await _versions(postgres_db) == list(range(1, len(upgraded) + 1))


async def test_refuses_a_schema_from_the_future(postgres_db: str) -> None:
    idx = PostgresIndex(postgres_db)
    await idx.open()
    await idx.close()
    conn = await asyncpg.connect(postgres_db)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew, match="999"):
        await PostgresIndex(postgres_db).open()


async def test_every_listing_query_has_an_index(index: PostgresIndex, postgres_db: str) -> None:
    flags = ["PENDING", "PROCESSING", "PROCESSED", "FAILED"]
    for n in range(200):
        await put(index, f"b{n}", flags=frozenset({flags[n % 4]}), user=f"u{n % 5}")
        if n % 10 == 0:
            await index.delete_blob(f"u{n % 5}", "default", f"b{n}")
    conn = await asyncpg.connect(postgres_db)
    try:
        await conn.execute("ANALYZE")
        await conn.execute("SET enable_seqscan = off")  # small tables: make the plan tell

        async def plan(sql: str, *args: object) -> str:
            rows = await conn.fetch(f"EXPLAIN {sql}", *args)
            return "\n".join(r[0] for r in rows)

        for order in Order:
            text = await plan(list_query(None, order), "u1", "default", 10)
            assert "blobs_by_seq" in text or "blobs_pkey" in text, text
            for flag in flags:
                text = await plan(list_query(flag, order), "u1", "default", 10)
                assert f"blobs_{flag.lower()}" in text, text
        assert "blobs_by_seq" in await plan(count_query(None), "u1", "default") or (
            "blobs_pkey" in await plan(count_query(None), "u1", "default")
        )
        assert "blobs_pending" in await plan(count_query("PENDING"), "u1", "default")
        assert "tombstones_by_seq" in await plan(LIST_DELETED_QUERY, "u1", "default")
        assert "Seq Scan" not in await plan(list_query(None, Order.NEWEST_FIRST), "u", "d", 5)
    finally:
        await conn.close()


async def test_schema_creation_refused_is_a_clear_error(postgres_db: str) -> None:
    admin = await asyncpg.connect(postgres_db)
    try:
        role = f"plain_{os.urandom(6).hex()}"  # roles are cluster-wide: one per test
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        # PostgreSQL 15 already denies it; older versions need telling.
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        dsn = postgres_db.replace("postgres@", f"{role}@", 1)
        with pytest.raises(StorageError, match="cannot create or migrate the schema"):
            await PostgresIndex(dsn).open()
    finally:
        await admin.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_database_is_a_clear_503() -> None:
    dsn = f"postgresql://someone:hunter2@127.0.0.1:{_closed_port()}/nothing"
    with pytest.raises(DatabaseUnavailable) as caught:
        await PostgresIndex(dsn).open()
    assert caught.value.status_hint == 503
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    assert "hunter2" not in redact_dsn(dsn)


async def test_missing_database_is_a_clear_error(postgres_dsn: str) -> None:
    dsn = postgres_dsn.rpartition("/")[0] + "/no_such_database"
    with pytest.raises(DatabaseUnavailable, match="no_such_database"):
        await PostgresIndex(dsn).open()


async def test_closed_index_refuses_with_503(postgres_db: str) -> None:
    idx = PostgresIndex(postgres_db)
    with pytest.raises(DatabaseUnavailable):
        await idx.get_blob("alice", "default", "x")
    await idx.open()
    await idx.close()
    with pytest.raises(DatabaseUnavailable):
        await idx.usage("alice")


async def test_connection_lost_mid_request_is_503_then_recovers(
    index: PostgresIndex, postgres_db: str
) -> None:
    await put(index, "x")
    admin = await asyncpg.connect(postgres_db)
    try:
        # Hold the row so that the index's UPDATE waits on it, inside the database...
        lock = admin.transaction()
        await lock.start()
        await admin.execute("SELECT 1 FROM blobs WHERE blob_id = 'x' FOR UPDATE")
        pending = asyncio.ensure_future(
            index.set_flags("alice", "default", "x", frozenset({"FAILED"}))
        )
        waiting: list[int] = []
        for _ in range(500):
            waiting = [
                r["pid"]
                for r in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            ]
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the UPDATE never waited on the lock"
        # ...then cut its connection, as a database restart or a network cut would.
        await admin.fetchval("SELECT pg_terminate_backend($1)", waiting[0])
        with pytest.raises(DatabaseUnavailable) as caught:
            await pending
        assert caught.value.status_hint == 503
        await lock.rollback()
    finally:
        await admin.close()
    # The pool replaces the lost connection: the next requests work.
    await index.set_flags("alice", "default", "x", frozenset({"PROCESSED"}))
    info = await index.get_blob("alice", "default", "x")
    assert info is not None and info.flags == {"PROCESSED"}
