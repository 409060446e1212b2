"""The PostgreSQL change feed's own promises, beyond the shared feed suite
(tests/storage/test_feed_suite.py): what only a real database shows.

- One user's writers wait on the user's feed lock, so their changes take their seqs in
  commit order (cursors never skip); a write and its change become visible together.
- Every write that appended a change notifies at its commit; a refused one does not.
- The listener (``follow_commits``) gets through a lost connection and an outage: one
  warning, one line when back, ``wake(None)`` after every connect; cancelled, it leaves
  no connection behind.
- A database at schema version 1 migrates to the feed's version with its blobs, and its
  feed starts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from blobsync.server.storage.base import (
    BlobExists,
    NewBlob,
    PreconditionFailed,
    QuotaExceeded,
)
from blobsync.server.storage.pglisten import APPLICATION_NAME, _close, listen
from blobsync.server.storage.postgres import (
    CHANGES_CHANNEL,
    FEED_LOCK_CLASS,
    FEED_POSITION_QUERY,
    MIGRATIONS,
    READ_CHANGES_QUERY,
    PostgresIndex,
    migrate,
    schema_version,
)

TAG = bytes(range(16))
LOGGER = "blobsync.server.storage.postgres"
WITHIN = 5.0  # a wake-up or a reconnect within this, on a loaded machine


@pytest.fixture
async def index(postgres_db: str) -> AsyncIterator[PostgresIndex]:
    idx = PostgresIndex(postgres_db)
    await idx.open()
    try:
        yield idx
    finally:
        await idx.close()


async def put(
    idx: PostgresIndex, blob_id: str, *, user: str = "alice", size: int = 10,
    flags: frozenset[str] = frozenset(), quota: int = 0,
) -> None:
    await idx.insert_blob(
        user, "default", NewBlob(blob_id, size, TAG, f"loc/{blob_id}", flags), quota=quota,
    )


class Wakes:
    """A ``wake`` callable that remembers its calls and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []
        self._changed = asyncio.Event()

    def __call__(self, users: set[str] | None) -> None:
        self.calls.append(users)
        self._changed.set()

    async def until(self, test: Callable[[set[str] | None], bool]) -> None:
        async def wait() -> None:
            while not any(test(c) for c in self.calls):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WITHIN)


async def listeners(dsn: str) -> int:
    """Backends of the listener (by its application_name) on this database."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        ))
    finally:
        await conn.close()


async def until_listeners(dsn: str, count: int) -> None:
    for _ in range(int(WITHIN / 0.05)):
        if await listeners(dsn) == count:
            return
        await asyncio.sleep(0.05)
    assert await listeners(dsn) == count


# serialisation ------------------------------------------------------------------------
async def test_one_users_writers_wait_for_the_feed_lock(
    index: PostgresIndex, postgres_db: str
) -> None:
    """A writer of alice that holds the feed lock (another process, say, between drawing
    its seq and committing) holds up alice's other writers, so none of them can commit a
    later seq first; and what a waiting write did is invisible until it commits whole."""
    await put(index, "m", flags=frozenset({"PENDING"}))
    await put(index, "d")
    before = await index.read_changes("alice", None, 100)
    admin = await asyncpg.connect(postgres_db)
    try:
        held = admin.transaction()
        await held.start()
        await admin.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", FEED_LOCK_CLASS, "alice"
        )
        pending = [
            asyncio.ensure_future(put(index, "n")),
            asyncio.ensure_future(
                index.insert_blobs("alice", "default", [NewBlob("r", 1, TAG, "loc/r")])
            ),
            asyncio.ensure_future(
                index.set_flags("alice", "default", "m", frozenset({"PROCESSING"}))
            ),
            asyncio.ensure_future(index.delete_blob("alice", "default", "d")),
        ]
        await asyncio.sleep(0.5)
        assert not any(p.done() for p in pending)
        # The blob rows wait with their changes: a crash now would leave neither.
        assert await index.get_blob("alice", "default", "n") is None
        assert await index.get_blob("alice", "default", "d") is not None
        assert await index.read_changes("alice", None, 100) == before
        assert await index.feed_position("alice") == before.position
        # Another user's writers do not wait for alice's.
        await asyncio.wait_for(put(index, "b", user="bob"), WITHIN)
        await held.rollback()
        await asyncio.wait_for(asyncio.gather(*pending), WITHIN)
    finally:
        await admin.close()
    after = await index.read_changes("alice", before.position, 100)
    assert sorted((c.blob_id, c.op) for c in after.changes) == [
        ("d", "delete"), ("m", "flags"), ("n", "put"), ("r", "put"),
    ]
    assert [c.seq for c in after.changes] == sorted(c.seq for c in after.changes)


async def test_feed_reads_go_through_the_index(index: PostgresIndex, postgres_db: str) -> None:
    for n in range(300):
        await put(index, f"b{n}", user=f"u{n % 5}")
    conn = await asyncpg.connect(postgres_db)
    try:
        await conn.execute("ANALYZE")
        await conn.execute("SET enable_seqscan = off")  # small tables: make the plan tell

        async def plan(sql: str, *args: object) -> str:
            return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))

        for args in (("u1", None, None, 11), ("u1", 40, "default", 11)):
            text = await plan(READ_CHANGES_QUERY, *args)
            assert "changes_by_user" in text and "Seq Scan on changes" not in text, text
        text = await plan(FEED_POSITION_QUERY, "u1")
        assert "changes_by_user" in text and "Seq Scan on changes" not in text, text
    finally:
        await conn.close()


# notifications ------------------------------------------------------------------------
async def test_each_write_notifies_at_commit_and_a_refused_one_does_not(
    index: PostgresIndex, postgres_db: str
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(postgres_db)
    try:
        await conn.add_listener(CHANGES_CHANNEL, lambda _c, _p, _ch, user: got.put_nowait(user))
        await put(index, "a", flags=frozenset({"PENDING"}))
        await index.insert_blobs(
            "alice", "default", [NewBlob(f"r{i}", 1, TAG, f"loc/r{i}") for i in range(3)]
        )
        await index.set_flags("alice", "default", "a", frozenset({"PROCESSING"}))
        await index.delete_blob("alice", "default", "r0")
        await put(index, "b", user="bob")
        for user in ("alice",) * 4 + ("bob",):  # one per transaction, a run's included
            assert await asyncio.wait_for(got.get(), WITHIN) == user
        with pytest.raises(BlobExists):
            await put(index, "a")
        with pytest.raises(QuotaExceeded):
            await put(index, "big", size=1000, quota=100)
        with pytest.raises(PreconditionFailed):
            await index.set_flags("alice", "default", "a", frozenset(), expect="PENDING")
        out = await index.insert_blobs("alice", "default", [NewBlob("a", 1, TAG, "loc/a2")])
        assert isinstance(out[0], BlobExists)
        await put(index, "c")  # a marker: the refused writes before it sent nothing
        assert await asyncio.wait_for(got.get(), WITHIN) == "alice"
        await asyncio.sleep(0.2)
        assert got.empty()
    finally:
        await conn.close()


# the listener -------------------------------------------------------------------------
async def test_the_listener_reconnects_after_its_connection_is_cut(
    index: PostgresIndex, postgres_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    wakes = Wakes()
    follower = asyncio.ensure_future(index.follow_commits(wakes, lambda: True))
    try:
        await wakes.until(lambda c: c is None)  # connected: everyone re-reads
        assert wakes.calls == [None]
        await put(index, "a")
        await wakes.until(lambda c: c == {"alice"})
        admin = await asyncpg.connect(postgres_db)
        try:
            cut = await admin.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()",
                APPLICATION_NAME,
            )
        finally:
            await admin.close()
        assert cut
        wakes.calls.clear()
        await wakes.until(lambda c: c is None)  # back, and everyone re-reads
        await put(index, "b", user="bob")
        await wakes.until(lambda c: c == {"bob"})
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], records
    # Cancelled, it closed its connection.
    await until_listeners(postgres_db, 0)


async def test_a_cancellation_while_closing_a_lost_connection_is_not_lost(
    postgres_db: str,
) -> None:
    """Server shutdown cancels the listener; when that lands as it closes a connection that
    was lost (which closes at once), the cancellation must still end it, or shutdown waits
    for ever. (Python 3.11's wait_for lost it: the server tests hung once in a few runs.)"""
    for steps in range(4):
        conn = await asyncpg.connect(postgres_db)
        conn.terminate()  # lost: close() has nothing to wait for
        closing = asyncio.ensure_future(_close(conn))
        for _ in range(steps):
            await asyncio.sleep(0)
        asked = closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert closing.cancelled() or not asked, f"cancellation lost after {steps} steps"


class Cable:
    """A TCP forwarder to PostgreSQL that a test unplugs (every connection cut, new ones
    refused) and plugs back in, on the same port: an outage of the database."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.local_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def plug(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.local_port or 0
        )
        self.local_port = self._server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._server = None

    async def close(self) -> None:
        if self._server is not None:
            await self.unplug()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()
                up_writer.transport.abort()
                self._writers -= {writer, up_writer}

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_the_listener_says_once_that_it_is_down_and_once_that_it_is_back(
    index: PostgresIndex, postgres_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    where = urlsplit(postgres_db)
    assert where.hostname is not None and where.port is not None
    cable = Cable(where.hostname, where.port)
    await cable.plug()
    through = postgres_db.replace(
        f"@{where.hostname}:{where.port}/", f"@127.0.0.1:{cable.local_port}/"
    )
    wakes = Wakes()
    follower = asyncio.ensure_future(
        listen(through, CHANGES_CHANNEL, wakes, "the test's database",
               retry_first=0.05, retry_max=0.2)
    )
    try:
        await wakes.until(lambda c: c is None)
        await cable.unplug()
        await asyncio.sleep(1.0)  # a dozen attempts at least, every one refused
        down = [r for r in caplog.records if r.name == LOGGER]
        assert [r.levelno for r in down] == [logging.WARNING], down
        assert "the test's database" in down[0].getMessage()
        await put(index, "meanwhile")  # its notice reaches nobody...
        wakes.calls.clear()
        await cable.plug()
        await wakes.until(lambda c: c is None)  # ...so everyone re-reads once back
        await put(index, "after")
        await wakes.until(lambda c: c == {"alice"})
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await cable.close()
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], records


# migration ----------------------------------------------------------------------------
async def test_a_database_of_version_1_gets_the_feed_and_keeps_its_blobs(
    postgres_db: str,
) -> None:
    conn = await asyncpg.connect(postgres_db)
    try:
        assert await migrate(conn, MIGRATIONS[:1]) == 1
        await conn.execute(
            "INSERT INTO blobs (user_id, namespace, blob_id, size, tag, location)"
            " VALUES ('alice', 'default', 'old', 5, $1, 'loc/old')",
            TAG,
        )
        await conn.execute("INSERT INTO usage VALUES ('alice', 5)")
    finally:
        await conn.close()
    idx = PostgresIndex(postgres_db)
    await idx.open()
    try:
        conn = await asyncpg.connect(postgres_db)
        try:
            assert await schema_version(conn) == len(MIGRATIONS) >= 2
        finally:
            await conn.close()
        assert len(idx.feed_id) == 16
        assert await idx.get_blob("alice", "default", "old") is not None
        # Blobs stored before the feed have no changes: a device lists in full once.
        assert await idx.feed_position("alice") == 0
        page = await idx.read_changes("alice", None, 10)
        assert (page.changes, page.position, page.done) == ([], 0, True)
        await idx.delete_blob("alice", "default", "old")
        page = await idx.read_changes("alice", 0, 10)
        assert [(c.blob_id, c.op) for c in page.changes] == [("old", "delete")]
    finally:
        await idx.close()
    again = PostgresIndex(postgres_db)
    await again.open()
    try:
        assert again.feed_id == idx.feed_id  # made once, with the schema
    finally:
        await again.close()
