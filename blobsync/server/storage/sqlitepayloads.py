"""Small payloads as rows of one SQLite file: a batch of them is one transaction, one fsync.

Files cost a create, an fsync and a link (and a directory fsync) per payload; a stream
upload of thousands of 10 KB blobs spends most of its time there. Here a whole run is one
``BEGIN IMMEDIATE ... COMMIT``, and with ``synchronous=FULL`` the commit is durable when it
returns (the index can use NORMAL: a lost index commit loses a row, but a payload committed
here is about to be named by a row, so it must never be lost).

- A location is ``db:`` and 32 hex digits, rising with time (``new_locations``). No file
  location can start so (file locations are ids joined by ``/``, and ids never hold
  ``:``), so a tiered store tells the two apart by the prefix alone. The primary key
  refuses a second writer of a name.
- WAL mode and a busy timeout, as the index: server workers share the file, readers never
  wait for the writer, a writer waits for the write lock instead of failing.
- Two connections, each in a thread of its own (sqlite3 blocks, the event loop must not):
  one writes, one reads, so downloads do not queue behind the fsyncs of uploads. Each call
  is one job in its thread, so no transaction spans an await.
- Payloads are held whole in memory while they pass: only small ones belong here
  (``max_size``); the writer refuses more.
- Space comes back: the file uses incremental auto-vacuum, so deleted payloads leave free
  pages that ``reclaim`` (the server's sweep, not each delete: deletes stay cheap) cuts
  off, after packing rows again when deletions left pages mostly empty; all of it in
  short write transactions, so uploads interleave. A file made by an older blobsync is
  converted once, by one VACUUM when a server opens it.
- Group commit: runs that arrive while a commit is under way wait for it and then go in
  together, in one transaction and one fsync (``_store_all``). Under load the fsyncs, one
  per stream request, were what every upload queued behind.
- Deletes commit with ``synchronous=NORMAL``: one lost in a power cut leaves an orphan
  payload, which the sweep removes; a payload insert must survive, a delete need not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from blobsync.format.errors import LimitExceeded
from blobsync.format.limits import valid_id

from .base import BATCH_BLOB_MAX, READ_PIECE_MAX, BlobNotFound
from .inline import InlineStore, InlineWriter
from .modes import fsync_dir
from .sqlitethread import IN_BATCH, SQLiteThread

T = TypeVar("T")

log = logging.getLogger(__name__)

PREFIX = "db:"

# The largest payload kept inline: every blob a stream upload batches (BATCH_BLOB_MAX)
# goes in as one row of a batch's transaction; larger ones are better off as files.
INLINE_MAX = BATCH_BLOB_MAX

SCHEMA_VERSION = 2
# Version 1. A rowid table, not WITHOUT ROWID: SQLite advises against the latter for rows
# this large.
SCHEMA = """CREATE TABLE payloads (
    location TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    mtime REAL NOT NULL
)"""
# Version 2: the rows and payload bytes stored, kept by every insert and delete in its
# transaction, so that reclaim knows how full the pages are without reading them all.
TOTALS = """CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
)"""

# Rows per query when listing for gc: bounds memory whatever the table holds.
LIST_PAGE = 1000

# Bytes ``reclaim`` frees per write transaction (4096 pages of 4 KiB): each step holds the
# write lock briefly, so uploads go on between steps.
RECLAIM_STEP_BYTES = 16 << 20

# The page size of a new payload database. Payloads of ~10 KB on 4 KiB pages took three
# overflow pages each, every one written to the -wal and again to the file by a separate
# call: on 32 KiB pages a run of them fills few pages and storing one cost less than half
# the CPU (issue 13). A database made before keeps its pages (WAL mode fixes the size).
PAGE_SIZE = 1 << 15

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental

# Below this share of the rows' bytes in the pages in use, reclaim packs the rows again.
COMPACT_BELOW = 0.6
# Bytes a row takes beside its payload: its location (35) and mtime (8), the record and
# cell headers, and its entry in the location index.
ROW_OVERHEAD = 100
# Rows moved per write transaction when packing (at most INLINE_MAX bytes each).
COMPACT_STEP_ROWS = 256


def new_location() -> str:
    return new_locations(1)[0]


def new_locations(count: int) -> list[str]:
    """``count`` fresh locations: 12 hex digits of the time (in 65 us steps, good for
    centuries), then 20 random ones (80 bits). Rising names append to the right edge of
    the location index: random ones touched a page of it per row, anywhere in the file,
    and a batch wrote a page of index for every 10 KB payload it stored. One read of the
    system's random source per run: a read per payload showed in a loaded server."""
    stamp = "%012x" % (time.time_ns() >> 16)
    digits = secrets.token_hex(10 * count)
    return [PREFIX + stamp + digits[i : i + 20] for i in range(0, 20 * count, 20)]


def is_inline(location: str) -> bool:
    return location.startswith(PREFIX)


def _check_location(location: str) -> None:
    if not is_inline(location):
        raise ValueError(f"not a SQLite payload location: {location!r}")


def _check_readable(location: str) -> None:
    # A location of another store is simply not here, as the interface promises readers.
    if not is_inline(location):
        raise BlobNotFound(f"no payload at {location}")


def _check_names(*values: str) -> None:
    # The names are not stored, but a store refuses what FilePayloads would refuse.
    for value in values:
        if not valid_id(value):
            raise ValueError(f"not a valid name: {value!r}")


def _migrate(conn: sqlite3.Connection) -> None:
    # Inside BEGIN IMMEDIATE: when N workers start at once, one creates, the rest find it.
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"payload database schema version {version} is newer than this blobsync "
            f"({SCHEMA_VERSION})"
        )
    if version == 0:
        conn.execute(SCHEMA)
    if version < 2:
        conn.execute(TOTALS)
        conn.execute(
            "INSERT INTO totals SELECT 1, count(*), coalesce(sum(length(data)), 0) FROM payloads"
        )
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _vacuum_step(conn: sqlite3.Connection, pages: int) -> int:
    """Cut up to ``pages`` free pages off the file; return how many went."""
    before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if before == 0:
        return 0
    # Its own transaction (autocommit), through executescript: the sqlite3 module steps
    # a PRAGMA that returns no rows once, and each step frees one page.
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
    after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return max(before - after, 0)


def _compact_step(conn: sqlite3.Connection, done: int, top: int) -> int:
    """Move the next COMPACT_STEP_ROWS rows with a rowid in (done, top] past the end of
    the table, where they are packed tight; return the last rowid moved (or ``top``).

    A new rowid is a delete and an insert in the b-tree: the row lands on the table's
    last page, and the part-full page it left empties as its neighbours follow. Rows get
    rowids above every current one, so they never meet one not yet moved; rows inserted
    meanwhile are above ``top`` too. Locations, and so readers, see no change.
    """
    row = conn.execute(
        "SELECT rowid FROM payloads WHERE rowid > ? AND rowid <= ? ORDER BY rowid "
        "LIMIT 1 OFFSET ?",
        (done, top, COMPACT_STEP_ROWS - 1),
    ).fetchone()
    upto = top if row is None else int(row[0])
    end = int(conn.execute("SELECT max(rowid) FROM payloads").fetchone()[0] or 0)
    conn.execute(
        "UPDATE payloads SET rowid = rowid - ? + ? WHERE rowid > ? AND rowid <= ?",
        (done, end, done, upto),
    )
    return upto


# Payload rows per INSERT statement: 3 parameters each.
ROWS_PER_INSERT = 500


def _insert(conn: sqlite3.Connection, rows: list[tuple[str, bytes, float]]) -> None:
    # A multi-row VALUES is one step: executemany stepped once per row, and sqlite3 lets
    # go of the GIL at every step, waiting to get it back from a busy event loop. OR
    # ROLLBACK: no statement journal (see sqlite._insert_rows); a name collision fails the
    # whole transaction, as it did.
    for i in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[i : i + ROWS_PER_INSERT]
        conn.execute(
            "INSERT OR ROLLBACK INTO payloads (location, data, mtime) VALUES "
            + ",".join(["(?, ?, ?)"] * len(part)),
            [value for row in part for value in row],
        )
    conn.execute(
        "UPDATE totals SET rows = rows + ?, bytes = bytes + ?",
        (len(rows), sum(len(d) for _, d, _ in rows)),
    )


def _delete(conn: sqlite3.Connection, locations: list[str]) -> None:
    rows = gone = 0
    for location in locations:
        for (size,) in conn.execute(
            "DELETE FROM payloads WHERE location = ? RETURNING length(data)", (location,)
        ).fetchall():
            rows += 1
            gone += int(size)
    if rows:
        conn.execute("UPDATE totals SET rows = rows - ?, bytes = bytes - ?", (rows, gone))


class SQLitePayloads(InlineStore):
    batched_reads = True  # read_many reads a run in one go

    def __init__(self, path: str | os.PathLike[str], max_size: int = INLINE_MAX) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_size = max_size
        self._writes = SQLiteThread(
            self.path, synchronous="FULL", name="sqlite-payloads-w", incremental_vacuum=True,
            page_size=PAGE_SIZE,
        )
        self._reads = SQLiteThread(self.path, synchronous="FULL", name="sqlite-payloads-r")
        # Runs waiting for the next group commit, and the task that commits them.
        self._queued: list[tuple[list[tuple[str, bytes, float]], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    def owns(self, location: str) -> bool:
        return is_inline(location)

    # housekeeping -----------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await self._writes.open()  # creates the file 0600, its directory 0700
            await self._writes.run(self._writes.write, _migrate)
            if self._writes.created:
                # The file's directory entry must survive a power cut like its contents.
                await asyncio.to_thread(fsync_dir, os.path.dirname(self.path))
            await self._writes.run(self._convert_to_incremental)
            await self._reads.open()
        except BaseException:
            await self.close()
            raise

    def _convert_to_incremental(self) -> None:
        """A payload database made before incremental auto-vacuum: one VACUUM makes it so
        (the connection asked for it already; only a VACUUM applies it to a used file)."""
        conn = self._writes.db()
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
            return
        log.info("payload database %s: converting to incremental auto-vacuum, once "
                 "(a VACUUM: it rewrites the file)", self.path)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def reclaim(self) -> int:
        """Give the space of deleted payloads back to the filesystem; return the bytes.

        Deleting small rows leaves pages part-full, which no vacuum gives back: when live
        payloads fill less than COMPACT_BELOW of the pages in use, the rows are first
        packed again, moved to the end of the table in steps of COMPACT_STEP_ROWS (each a
        short write transaction, so uploads interleave), and the location index rebuilt.
        Then the free pages are cut off the file, RECLAIM_STEP_BYTES per transaction, and
        a checkpoint moves all of it into the file and empties the -wal.
        """
        pages_before, page_size = await self._writes.run(self._page_count)
        if await self._reads.run(self._fill) < COMPACT_BELOW:
            await self._compact()
        step = max(RECLAIM_STEP_BYTES // page_size, 1)
        while await self._writes.run(self._vacuum_step, step) >= step:
            pass
        await self._writes.run(self._checkpoint)
        pages_after, _ = await self._writes.run(self._page_count)
        return max(pages_before - pages_after, 0) * page_size

    def _page_count(self) -> tuple[int, int]:
        conn = self._writes.db()
        return (int(conn.execute("PRAGMA page_count").fetchone()[0]),
                int(conn.execute("PRAGMA page_size").fetchone()[0]))

    def _fill(self) -> float:
        """What the rows need over the bytes of the pages in use (1.0 for an empty
        database): about 0.8 to 1 for packed rows, whatever their size."""
        conn = self._reads.db()
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        rows, stored = conn.execute("SELECT rows, bytes FROM totals").fetchone()
        live = float(stored + rows * ROW_OVERHEAD)
        used = (pages - free) * size
        return 1.0 if live == 0 or used == 0 else live / used

    async def _compact(self) -> None:
        top = await self._reads.run(
            lambda: self._reads.db().execute("SELECT max(rowid) FROM payloads").fetchone()[0]
        )
        done = 0
        while top is not None and done < top:
            done = await self._writes.run(self._unsynced, _compact_step, done, top)
        await self._writes.run(self._unsynced, lambda c: c.execute("REINDEX payloads"))

    def _vacuum_step(self, pages: int) -> int:
        conn = self._writes.db()
        conn.execute("PRAGMA synchronous = NORMAL")  # see _unsynced
        try:
            return _vacuum_step(conn, pages)
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    def _checkpoint(self) -> None:
        self._writes.db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        try:
            await self._reads.close()
        finally:
            await self._writes.close()

    # writing ----------------------------------------------------------------------------
    async def _store_all(self, payloads: list[bytes]) -> list[str]:
        """Each payload to a fresh location, durable on return, committed in ONE
        transaction with whatever other runs queued meanwhile (group commit)."""
        now = time.time()
        locations = new_locations(len(payloads))
        rows = [(location, data, now) for location, data in zip(locations, payloads,
                                                                strict=True)]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((rows, done))
        if self._committer is None:
            self._committer = asyncio.get_running_loop().create_task(self._commit_queued())
        # Shielded: the commit goes on for the others whatever becomes of this caller (as
        # a job already in the thread always did).
        await asyncio.shield(done)
        return locations

    async def _commit_queued(self) -> None:
        """Commit the queued runs, all that are waiting at once, until none is left.

        A name collision (2^-128) or a failing disk rolls back the whole transaction:
        every run in it fails and nothing of any is left, as a run alone would."""
        try:
            while self._queued:
                group, self._queued = self._queued, []
                rows = group[0][0] if len(group) == 1 else [r for run, _ in group for r in run]
                try:
                    await self._writes.run(self._writes.write, _insert, rows)
                except BaseException as exc:
                    for _, done in group:
                        if done.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            done.cancel()
                        else:
                            done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for _, done in group:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._committer = None
            for _, done in self._queued:  # only left by a cancel of this task
                done.cancel()
            self._queued = []

    async def writer(self, user: str, namespace: str, blob_id: str) -> InlineWriter:
        _check_names(user, namespace, blob_id)
        return InlineWriter(self)

    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Commit many small payloads, each to a location of its own, in one transaction;
        return the locations in order. All are durable when this returns; if it raises,
        none is left."""
        _check_names(user, namespace, *(blob_id for blob_id, _ in items))
        too_big = [blob_id for blob_id, data in items if len(data) > self.max_size]
        if too_big:
            raise LimitExceeded(f"payload of {too_big[0]} is larger than {self.max_size} bytes")
        if not items:
            return []
        return await self._store_all([data for _, data in items])

    # reading ----------------------------------------------------------------------------
    async def read_many(self, locations: list[str]) -> list[bytes]:
        """The whole payloads at ``locations``, in order, in one query per 500 distinct
        locations. BlobNotFound if any is missing."""
        for location in locations:
            _check_readable(location)

        def query() -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            unique = list(dict.fromkeys(locations))
            for i in range(0, len(unique), IN_BATCH):
                batch = unique[i : i + IN_BATCH]
                marks = ",".join("?" * len(batch))
                for location, data in self._reads.db().execute(
                    f"SELECT location, data FROM payloads WHERE location IN ({marks})", batch
                ):
                    found[location] = bytes(data)
            return found

        found = await self._reads.run(query)
        missing = [location for location in locations if location not in found]
        if missing:
            raise BlobNotFound(f"no payload at {missing[0]}")
        return [found[location] for location in locations]

    async def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        _check_readable(location)
        # Clamped as FilePayloads clamps: a negative offset or length counts as zero.
        start = max(offset, 0)
        want = None if length is None else max(length, 0)

        def query() -> bytes | None:
            # substr on a BLOB counts bytes, from 1; past the end it gives an empty blob,
            # and for an empty blob NULL. A NULL length reads to the end.
            row = self._reads.db().execute(
                "SELECT substr(data, ?, coalesce(?, length(data))) FROM payloads "
                "WHERE location = ?",
                (start + 1, want, location),
            ).fetchone()
            if row is None:
                return None
            return b"" if row[0] is None else bytes(row[0])

        data = await self._reads.run(query)
        if data is None:
            raise BlobNotFound(f"no payload at {location}")
        for pos in range(0, len(data), READ_PIECE_MAX):
            yield data[pos : pos + READ_PIECE_MAX]  # the whole of it is not copied

    # deleting and listing ---------------------------------------------------------------
    async def delete(self, location: str) -> None:
        await self.delete_many([location])

    async def delete_many(self, locations: list[str]) -> None:
        """Remove the payloads at ``locations`` in one transaction; missing ones are no
        error."""
        for location in locations:
            _check_location(location)
        if not locations:
            return

        await self._writes.run(self._unsynced, _delete, locations)

    def _unsynced(self, tx: Callable[..., T], *args: object) -> T:
        """``tx(conn, *args)`` in a write transaction whose commit does not wait for the
        disk: for changes whose loss in a power cut costs space, never a payload (deletes,
        moves of rows and pages, which are atomic all the same)."""
        conn = self._writes.db()
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            return self._writes.write(tx, *args)
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        # Page by key: each query is short, so a long gc never holds a read snapshot open
        # (which would stop WAL checkpoints) nor the whole listing in memory.
        after = ""
        while True:
            page: list[tuple[str, float]] = await self._reads.run(
                lambda a=after: self._reads.db().execute(
                    "SELECT location, mtime FROM payloads WHERE location > ? "
                    "ORDER BY location LIMIT ?",
                    (a, LIST_PAGE),
                ).fetchall()
            )
            for location, mtime in page:
                yield location, float(mtime)
            if len(page) < LIST_PAGE:
                return
            after = page[-1][0]
