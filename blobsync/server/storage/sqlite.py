"""The metadata index in one SQLite file, shared safely by several server processes.

- WAL mode: readers never wait for the writer, and ``synchronous=NORMAL`` is durable
  enough there (a power cut may lose the last commits, never corrupt the file).
- ``busy_timeout``: a process that finds the write lock taken waits instead of failing.
- Every write is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock before it
  reads, so the quota check and the insert see the same usage in every process.
- One connection per index, used from one dedicated thread: sqlite3 blocks, the event
  loop must not. Each method is one job in that thread, so no transaction spans an await
  and a cancelled caller never leaves a transaction open.
- ``seq`` is an AUTOINCREMENT rowid: strictly increasing across processes, never reused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .base import (
    FLAGS,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    Change,
    ChangePage,
    CursorGone,
    MetadataIndex,
    NewBlob,
    Order,
    PreconditionFailed,
    Principal,
    QuotaExceeded,
    StorageError,
    UserExists,
    UserNotFound,
)
from .sqlitethread import IN_BATCH, SQLiteThread

T = TypeVar("T")

# Flags are a bitmask in one column: a flag change is one UPDATE, and each flag gets a
# partial index holding only the blobs that carry it (the incoming box lists PENDING ones).
FLAG_BITS = {"PENDING": 1, "PROCESSING": 2, "PROCESSED": 4, "FAILED": 8}
assert set(FLAG_BITS) == FLAGS



def flags_to_mask(flags: Iterable[str]) -> int:
    mask = 0
    for flag in flags:
        mask |= FLAG_BITS[flag]
    return mask


def mask_to_flags(mask: int) -> frozenset[str]:
    return frozenset(f for f, bit in FLAG_BITS.items() if mask & bit)


def _flag_term(flag: str) -> str:
    # Spelled exactly as in the partial index, so the planner can use it.
    return f"(flags & {FLAG_BITS[flag]}) != 0"


# Migration N (1-based) brings the schema from version N-1 to N. Append, never edit.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE users (uuid TEXT PRIMARY KEY, token_hash TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE services (name TEXT PRIMARY KEY, token_hash TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE blobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            namespace TEXT NOT NULL,
            blob_id TEXT NOT NULL,
            size INTEGER NOT NULL,
            tag BLOB NOT NULL,
            location TEXT NOT NULL,
            flags INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            UNIQUE (user, namespace, blob_id)
        )""",
        # Covering index of the listing in stored order (blob_id included: no table lookup).
        "CREATE INDEX blobs_by_seq ON blobs (user, namespace, seq, blob_id)",
        *(
            f"CREATE INDEX blobs_{flag.lower()} ON blobs (user, namespace, seq, blob_id) "
            f"WHERE {_flag_term(flag)}"
            for flag in FLAG_BITS
        ),
        """CREATE TABLE tombstones (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            namespace TEXT NOT NULL,
            blob_id TEXT NOT NULL,
            deleted REAL NOT NULL,
            UNIQUE (user, namespace, blob_id)
        )""",
        "CREATE INDEX tombstones_by_seq ON tombstones (user, namespace, seq, blob_id)",
        "CREATE TABLE usage (user TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID",
    ],
    # 2: the change feed (SPEC 8). Writers are serialised by BEGIN IMMEDIATE, so the
    # AUTOINCREMENT seq commits in order in every process: cursors never skip.
    [
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            namespace TEXT NOT NULL,
            blob_id TEXT NOT NULL,
            op TEXT NOT NULL,
            size INTEGER,
            tag BLOB,
            flags INTEGER,
            created REAL NOT NULL
        )""",
        # The feed's one index: a second one, by blob for compaction, cost every write
        # more than compaction's sort of the table once an interval saves.
        "CREATE INDEX changes_by_user ON changes (user, seq)",
        # Per user, the newest seq that retention dropped: older cursors get 410.
        "CREATE TABLE feed_horizon (user TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE feed (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO feed VALUES ('id', lower(hex(randomblob(8))))",
    ],
    # 3: the sealed meta of SPEC 11, opaque text, with the blob and with its put change
    # (a change keeps the meta its blob had, whatever happens to the id later). Existing
    # rows have none: NULL. Nullable columns added last cost a row without a meta nothing.
    [
        "ALTER TABLE blobs ADD COLUMN meta TEXT",
        "ALTER TABLE changes ADD COLUMN meta TEXT",
    ],
]

_CHANGE_INSERT = (
    "INSERT INTO changes (user, namespace, blob_id, op, size, tag, flags, created, meta) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# How often a process looks for other processes' commits while requests wait on the feed:
# a wake-up within this (SPEC 8 asks for one second), for one cheap query each time.
COMMIT_POLL_INTERVAL = 0.05
# While nobody waits, only how soon polling resumes when someone does: still well inside
# SPEC 8's second, and an idle worker wakes 4 times a second instead of 20.
IDLE_CHECK_INTERVAL = 0.25

_BLOB_COLUMNS = "user, namespace, blob_id, size, tag, flags, seq, location, meta"
# A change that a later change of the same blob supersedes (compact_changes).
# The changes a later one of the same blob supersedes: everything before its last put or
# delete, and flags changes before its last flags change. One grouping pass over the table
# (no index by blob: see migration 2).
_SUPERSEDED = (
    "seq IN (SELECT c.seq FROM changes AS c JOIN ("
    "SELECT user, namespace, blob_id, "
    "max(CASE WHEN op != 'flags' THEN seq END) AS last_put_or_delete, "
    "max(CASE WHEN op = 'flags' THEN seq END) AS last_flags "
    "FROM changes GROUP BY user, namespace, blob_id HAVING count(*) > 1"
    ") AS g ON c.user = g.user AND c.namespace = g.namespace AND c.blob_id = g.blob_id "
    "WHERE c.seq < g.last_put_or_delete OR (c.op = 'flags' AND c.seq < g.last_flags))"
)


# Rows per multi-row INSERT: 9 parameters each, well under SQLite's 32,766 (3.32 and on).
ROWS_PER_INSERT = 500


def _present(conn: sqlite3.Connection, user: str, namespace: str, blob_ids: list[str]) -> set[str]:
    """The ids of ``blob_ids`` indexed already: one statement, one row (a result row per
    id would be a step each, and sqlite3 lets go of the GIL at every step)."""
    (found,) = conn.execute(
        "SELECT json_group_array(blob_id) FROM blobs WHERE user = ? AND namespace = ? "
        "AND blob_id IN (SELECT value FROM json_each(?))",
        (user, namespace, json.dumps(blob_ids)),
    ).fetchone()
    return set(json.loads(found))


def _insert_rows(
    conn: sqlite3.Connection, user: str, namespace: str, blobs: list[NewBlob], now: float
) -> list[int]:
    """Insert rows known to be new, in order, ROWS_PER_INSERT to a statement; their seqs.

    A statement per row released the GIL once per row (and the event loop, busy parsing
    the next blobs, held it): a multi-row VALUES is one step. AUTOINCREMENT numbers the
    rows of one statement one after the other, under the write lock, so the seqs are the
    statement's last rowid and those just before it.

    OR ROLLBACK: a statement of many rows that could fail alone keeps a statement journal
    of every page it changes, and past 64 KiB (random ids touch a page of the id index
    per row) SQLite spills it to a temporary file, a write per page. A conflict cannot
    happen here (the ids were looked up under the same write lock); were it to, the whole
    transaction goes, which the caller handles as any failed write.
    """
    seqs: list[int] = []
    for i in range(0, len(blobs), ROWS_PER_INSERT):
        part = blobs[i : i + ROWS_PER_INSERT]
        values: list[object] = []
        for blob in part:
            values += (user, namespace, blob.blob_id, blob.size, bytes(blob.tag),
                       blob.location, flags_to_mask(blob.flags), now, blob.meta)
        cur = conn.execute(
            "INSERT OR ROLLBACK INTO blobs (user, namespace, blob_id, size, tag, location, "
            "flags, created, meta) VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part)),
            values,
        )
        last = cur.lastrowid
        assert last is not None and cur.rowcount == len(part)
        seqs += range(last - len(part) + 1, last + 1)
    return seqs


def _row_to_info(row: tuple[Any, ...]) -> BlobInfo:
    user, namespace, blob_id, size, tag, flags, seq, location, meta = row
    return BlobInfo(user, namespace, blob_id, size, bytes(tag), mask_to_flags(flags), seq,
                    location, meta)


class SQLiteIndex(MetadataIndex):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._thread = SQLiteThread(self.path, synchronous="NORMAL", name="sqlite-index")
        self._run = self._thread.run
        self._db = self._thread.db
        self._write = self._thread.write
        # gc's full listing of locations on a connection of its own: it neither waits for
        # nor holds up the requests queued on the main one (a row insert waiting for the
        # write lock, say), and a WAL reader never blocks the writer.
        self._scan = SQLiteThread(self.path, synchronous="NORMAL", name="sqlite-index-scan")

    async def open(self) -> None:
        await self._thread.open()
        try:
            await self._run(self._write, self._migrate)
            await self._scan.open()
            self.feed_id = await self._run(
                lambda: self._db().execute("SELECT value FROM feed WHERE key = 'id'").fetchone()[0]
            )
        except BaseException:
            await self.close()
            raise

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        # Inside BEGIN IMMEDIATE: when N workers start at once, one migrates, the rest wait
        # for its commit and then find nothing left to do.
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else row[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"index schema version {version} is newer than this blobsync "
                f"({len(MIGRATIONS)})"
            )
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        if row is None:
            conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    async def close(self) -> None:
        try:
            await self._scan.close()
        finally:
            await self._thread.close()

    async def schema_version(self) -> int:
        row = await self._run(
            lambda: self._db().execute("SELECT version FROM schema_version").fetchone()
        )
        return int(row[0])

    # users and services -----------------------------------------------------------------
    async def add_user(self, uuid: str, token_hash: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO users VALUES (?, ?)", (uuid, token_hash))
            except sqlite3.IntegrityError:
                raise UserExists(f"user {uuid} exists") from None

        await self._run(self._write, tx)

    async def set_user_token(self, uuid: str, token_hash: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE users SET token_hash = ? WHERE uuid = ?", (token_hash, uuid))
            if cur.rowcount == 0:
                raise UserNotFound(f"no user {uuid}")

        await self._run(self._write, tx)

    async def remove_user(self, uuid: str) -> None:
        # The payloads stay behind as orphans: gc collects them.
        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM users WHERE uuid = ?", (uuid,)).rowcount == 0:
                raise UserNotFound(f"no user {uuid}")
            for table in ("blobs", "tombstones", "usage", "changes", "feed_horizon"):
                conn.execute(f"DELETE FROM {table} WHERE user = ?", (uuid,))

        await self._run(self._write, tx)

    def _principal(self, sql: str, *args: Any) -> Principal | None:
        row = self._db().execute(sql, args).fetchone()
        return None if row is None else Principal(row[0], row[1])

    def _principals(self, sql: str) -> list[Principal]:
        return [Principal(n, t) for n, t in self._db().execute(sql).fetchall()]

    async def get_user(self, uuid: str) -> Principal | None:
        return await self._run(
            self._principal, "SELECT uuid, token_hash FROM users WHERE uuid = ?", uuid
        )

    async def list_users(self) -> list[Principal]:
        return await self._run(self._principals, "SELECT uuid, token_hash FROM users ORDER BY 1")

    async def add_service(self, name: str, token_hash: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO services VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash",
                (name, token_hash),
            )

        await self._run(self._write, tx)

    async def get_service(self, name: str) -> Principal | None:
        return await self._run(
            self._principal, "SELECT name, token_hash FROM services WHERE name = ?", name
        )

    async def list_services(self) -> list[Principal]:
        return await self._run(
            self._principals, "SELECT name, token_hash FROM services ORDER BY 1"
        )

    async def remove_service(self, name: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM services WHERE name = ?", (name,)).rowcount == 0:
                raise UserNotFound(f"no service {name}")

        await self._run(self._write, tx)

    # blobs ------------------------------------------------------------------------------
    @staticmethod
    def _insert_one(
        conn: sqlite3.Connection,
        user: str,
        namespace: str,
        blob_id: str,
        size: int,
        tag: bytes,
        location: str,
        flags: frozenset[str],
        quota: int,
        meta: str | None = None,
    ) -> BlobInfo:
        mask = flags_to_mask(flags)
        try:
            cur = conn.execute(
                "INSERT INTO blobs (user, namespace, blob_id, size, tag, location, flags, "
                "created, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user, namespace, blob_id, size, bytes(tag), location, mask, time.time(), meta),
            )
        except sqlite3.IntegrityError:
            # The unique constraint decides id races, in every process alike.
            raise BlobExists(f"blob {blob_id} exists") from None
        seq = cur.lastrowid
        assert seq is not None
        # fetchall: a RETURNING statement must run to its end before COMMIT.
        (used,) = conn.execute(
            "INSERT INTO usage VALUES (?, ?) "
            "ON CONFLICT (user) DO UPDATE SET bytes = bytes + excluded.bytes RETURNING bytes",
            (user, size),
        ).fetchall()[0]
        if quota > 0 and used > quota:
            raise QuotaExceeded(f"quota of {quota} bytes exceeded")  # rolls back the insert
        conn.execute(
            "DELETE FROM tombstones WHERE user = ? AND namespace = ? AND blob_id = ?",
            (user, namespace, blob_id),
        )
        conn.execute(
            _CHANGE_INSERT,
            (user, namespace, blob_id, "put", size, bytes(tag), mask, time.time(), meta),
        )
        return BlobInfo(user, namespace, blob_id, size, bytes(tag), frozenset(flags), seq,
                        location, meta)

    async def insert_blob(
        self,
        user: str,
        namespace: str,
        blob: NewBlob,
        quota: int = 0,
    ) -> BlobInfo:
        return await self._run(
            self._write, self._insert_one, user, namespace, blob.blob_id, blob.size, blob.tag,
            blob.location, frozenset(blob.flags), quota, blob.meta,
        )

    async def insert_blobs(
        self,
        user: str,
        namespace: str,
        blobs: list[NewBlob],
        quota: int = 0,
    ) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        """Index a run of blobs, each with ``insert_blob``'s rules, in ONE transaction.

        ``blobs`` have durable payloads. Returns one outcome per blob, in order: its
        BlobInfo, or BlobExists for an id already indexed
        (whatever the quota: the id is checked first). The first row that would pass the
        quota gets QuotaExceeded and ends the run: the list is then shorter than ``blobs``,
        and the rows after it are not indexed. A stream upload of many small blobs pays one
        commit instead of one per blob.
        """

        def tx(conn: sqlite3.Connection) -> list[BlobInfo | BlobExists | QuotaExceeded]:
            # Inside BEGIN IMMEDIATE: no other process changes the usage or the ids
            # meanwhile, so the outcomes are decided first and the rows go in after.
            row = conn.execute("SELECT bytes FROM usage WHERE user = ?", (user,)).fetchone()
            used = 0 if row is None else int(row[0])
            present = _present(conn, user, namespace, [blob.blob_id for blob in blobs])
            added = 0
            now = time.time()
            # The rows to insert stand in their own place until their seq is known.
            out: list[NewBlob | BlobExists | QuotaExceeded] = []
            chosen: list[NewBlob] = []
            for blob in blobs:
                if blob.blob_id in present:
                    # Before the quota, as in every backend (409 before 507: SPEC 9).
                    out.append(BlobExists(f"blob {blob.blob_id} exists"))
                    continue
                if quota > 0 and used + added + blob.size > quota:
                    out.append(QuotaExceeded(f"quota of {quota} bytes exceeded"))
                    break
                present.add(blob.blob_id)  # a second copy in the run exists by then
                added += blob.size
                chosen.append(blob)
                out.append(blob)
            seqs: list[int] = []
            if chosen:
                seqs = _insert_rows(conn, user, namespace, chosen, now)
                conn.execute(
                    "INSERT INTO usage VALUES (?, ?) "
                    "ON CONFLICT (user) DO UPDATE SET bytes = bytes + excluded.bytes",
                    (user, added),
                )
                conn.execute(
                    "DELETE FROM tombstones WHERE user = ? AND namespace = ? "
                    "AND blob_id IN (SELECT value FROM json_each(?))",
                    (user, namespace, json.dumps([blob.blob_id for blob in chosen])),
                )
                # The feed's rows copied from the blobs' own, in seq order: one statement.
                copied = conn.execute(
                    "INSERT OR ROLLBACK INTO changes (user, namespace, blob_id, op, size, tag, "
                    "flags, created, meta) SELECT user, namespace, blob_id, 'put', size, tag, "
                    "flags, created, meta FROM blobs WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    (seqs[0], seqs[-1]),
                ).rowcount
                if copied != len(chosen):
                    # One change per stored blob, or nothing of the run (it rolls back).
                    raise StorageError(f"{copied} changes for {len(chosen)} new rows")
            seq_of = iter(seqs)
            return [
                BlobInfo(user, namespace, o.blob_id, o.size, bytes(o.tag), frozenset(o.flags),
                         next(seq_of), o.location, o.meta) if isinstance(o, NewBlob) else o
                for o in out
            ]

        return await self._run(self._write, tx)

    async def insert_many(
        self, rows: Iterable[tuple[str, str, str, int, bytes, str, frozenset[str]]]
    ) -> int:
        """Index many blobs in one transaction, without quota; for tests and benchmarks.

        Each row is (user, namespace, blob_id, size, tag, location, flags). Raises
        BlobExists (and inserts nothing) if any id is already indexed.
        """
        now = time.time()
        values = [
            (user, ns, bid, size, bytes(tag), loc, flags_to_mask(flags), now)
            for user, ns, bid, size, tag, loc, flags in rows
        ]
        added: dict[str, int] = {}
        for v in values:
            added[v[0]] = added.get(v[0], 0) + v[3]

        def tx(conn: sqlite3.Connection) -> int:
            try:
                conn.executemany(
                    "INSERT INTO blobs (user, namespace, blob_id, size, tag, location, flags, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
            except sqlite3.IntegrityError:
                raise BlobExists("one of the blobs exists") from None
            conn.executemany(
                "INSERT INTO usage VALUES (?, ?) "
                "ON CONFLICT (user) DO UPDATE SET bytes = bytes + excluded.bytes",
                list(added.items()),
            )
            conn.executemany(
                "DELETE FROM tombstones WHERE user = ? AND namespace = ? AND blob_id = ?",
                [v[:3] for v in values],
            )
            conn.executemany(
                _CHANGE_INSERT,
                [(*v[:3], "put", v[3], v[4], v[6], v[7], None) for v in values],
            )
            return len(values)

        return await self._run(self._write, tx)

    async def get_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo | None:
        def read() -> BlobInfo | None:
            row = self._db().execute(
                f"SELECT {_BLOB_COLUMNS} FROM blobs "
                "WHERE user = ? AND namespace = ? AND blob_id = ?",
                (user, namespace, blob_id),
            ).fetchone()
            return None if row is None else _row_to_info(row)

        return await self._run(read)

    async def delete_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo:
        def tx(conn: sqlite3.Connection) -> BlobInfo:
            rows = conn.execute(
                f"DELETE FROM blobs WHERE user = ? AND namespace = ? AND blob_id = ? "
                f"RETURNING {_BLOB_COLUMNS}",
                (user, namespace, blob_id),
            ).fetchall()
            if not rows:
                raise BlobNotFound(f"no blob {blob_id}")
            info = _row_to_info(rows[0])
            conn.execute("UPDATE usage SET bytes = bytes - ? WHERE user = ?", (info.size, user))
            # REPLACE gives a re-deleted id a fresh seq: it is the newest deletion.
            conn.execute(
                "INSERT OR REPLACE INTO tombstones (user, namespace, blob_id, deleted) "
                "VALUES (?, ?, ?, ?)",
                (user, namespace, blob_id, time.time()),
            )
            conn.execute(
                _CHANGE_INSERT,
                (user, namespace, blob_id, "delete", None, None, None, time.time(), None),
            )
            return info

        return await self._run(self._write, tx)

    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        mask = flags_to_mask(flags)

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT flags FROM blobs WHERE user = ? AND namespace = ? AND blob_id = ?",
                (user, namespace, blob_id),
            ).fetchone()
            if row is None:
                raise BlobNotFound(f"no blob {blob_id}")
            if expect is not None and not row[0] & FLAG_BITS[expect]:
                raise PreconditionFailed(f"blob {blob_id} is not flagged {expect}")
            conn.execute(
                "UPDATE blobs SET flags = ? WHERE user = ? AND namespace = ? AND blob_id = ?",
                (mask, user, namespace, blob_id),
            )
            conn.execute(
                _CHANGE_INSERT,
                (user, namespace, blob_id, "flags", None, None, mask, time.time(), None),
            )

        await self._run(self._write, tx)

    @staticmethod
    def _where(filter_flag: str | None) -> str:
        where = "WHERE user = ? AND namespace = ?"
        return where if filter_flag is None else f"{where} AND {_flag_term(filter_flag)}"

    def _listing_sql(
        self, filter_flag: str | None, order: Order, limit: int | None, columns: str = "blob_id"
    ) -> str:
        sql = f"SELECT {columns} FROM blobs {self._where(filter_flag)}"
        if order is Order.OLDEST_FIRST:
            sql += " ORDER BY seq"
        elif order is Order.NEWEST_FIRST:
            sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {max(int(limit), 0)}"
        return sql

    async def list_blobs(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[str]:
        sql = self._listing_sql(filter_flag, order, limit)

        def read() -> list[str]:
            return [r[0] for r in self._db().execute(sql, (user, namespace))]

        return await self._run(read)

    async def list_blobs_meta(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[tuple[str, int, str | None]]:
        # Not the covering index of the plain listing: the size and meta are in the rows.
        sql = self._listing_sql(filter_flag, order, limit, "blob_id, size, meta")

        def read() -> list[tuple[str, int, str | None]]:
            return self._db().execute(sql, (user, namespace)).fetchall()

        return await self._run(read)

    async def explain_listing(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> str:
        """The query plan of a listing, so tests can check that an index serves it."""
        sql = "EXPLAIN QUERY PLAN " + self._listing_sql(filter_flag, order, limit)

        def read() -> str:
            return "\n".join(str(r[-1]) for r in self._db().execute(sql, (user, namespace)))

        return await self._run(read)

    async def count_blobs(
        self, user: str, namespace: str, *, filter_flag: str | None = None
    ) -> int:
        sql = f"SELECT count(*) FROM blobs {self._where(filter_flag)}"

        def read() -> int:
            return int(self._db().execute(sql, (user, namespace)).fetchone()[0])

        return await self._run(read)

    async def list_deleted(self, user: str, namespace: str) -> list[str]:
        def read() -> list[str]:
            return [
                r[0]
                for r in self._db().execute(
                    "SELECT blob_id FROM tombstones WHERE user = ? AND namespace = ? "
                    "ORDER BY seq",
                    (user, namespace),
                )
            ]

        return await self._run(read)

    async def add_tombstone(self, user: str, namespace: str, blob_id: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                "SELECT 1 FROM blobs WHERE user = ? AND namespace = ? AND blob_id = ?",
                (user, namespace, blob_id),
            ).fetchone():
                return False
            cur = conn.execute(
                "INSERT OR IGNORE INTO tombstones (user, namespace, blob_id, deleted) "
                "VALUES (?, ?, ?, ?)",
                (user, namespace, blob_id, time.time()),
            )
            return cur.rowcount > 0

        return await self._run(self._write, tx)

    async def get_blobs(self, user: str, namespace: str, blob_ids: list[str]) -> list[BlobInfo]:
        def read() -> list[BlobInfo]:
            found: dict[str, BlobInfo] = {}
            unique = list(dict.fromkeys(blob_ids))
            for i in range(0, len(unique), IN_BATCH):
                batch = unique[i : i + IN_BATCH]
                marks = ",".join("?" * len(batch))
                for row in self._db().execute(
                    f"SELECT {_BLOB_COLUMNS} FROM blobs WHERE user = ? AND namespace = ? "
                    f"AND blob_id IN ({marks})",
                    (user, namespace, *batch),
                ):
                    info = _row_to_info(row)
                    found[info.blob_id] = info
            return [found[b] for b in blob_ids if b in found]

        return await self._run(read)

    async def usage(self, user: str) -> int:
        def read() -> int:
            row = self._db().execute("SELECT bytes FROM usage WHERE user = ?", (user,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(read)

    async def all_locations(self) -> set[str]:
        def read() -> set[str]:
            return {r[0] for r in self._scan.db().execute("SELECT location FROM blobs")}

        return await self._scan.run(read)

    # the change feed --------------------------------------------------------------------
    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _user_position(conn: sqlite3.Connection, user: str) -> int:
        (newest,) = conn.execute(
            "SELECT max(seq) FROM changes WHERE user = ?", (user,)
        ).fetchone()
        row = conn.execute("SELECT seq FROM feed_horizon WHERE user = ?", (user,)).fetchone()
        return max(newest or 0, 0 if row is None else int(row[0]))

    async def read_changes(
        self, user: str, since: int | None, limit: int, namespace: str | None = None
    ) -> ChangePage:
        def read() -> ChangePage:
            conn = self._db()
            # One read transaction: the changes and the position come from one snapshot,
            # so the position never lies past a change this page did not see.
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT seq FROM feed_horizon WHERE user = ?", (user,)
                ).fetchone()
                horizon = 0 if row is None else int(row[0])
                if since is not None:
                    last = self._last_seq(conn)
                    if not horizon <= since <= last:
                        raise CursorGone(
                            f"cursor position {since} is outside the feed ({horizon}..{last})"
                        )
                start = horizon if since is None else since
                sql = (
                    "SELECT seq, namespace, blob_id, op, size, tag, flags, meta FROM changes "
                    "WHERE user = ? AND seq > ?"
                )
                args: tuple[Any, ...] = (user, start)
                if namespace is not None:
                    sql += " AND namespace = ?"
                    args += (namespace,)
                rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit + 1)).fetchall()
                changes = [_row_to_change(r) for r in rows[:limit]]
                if len(rows) > limit:
                    return ChangePage(changes, changes[-1].seq, False)
                return ChangePage(changes, max(start, self._user_position(conn, user)), True)
            finally:
                conn.execute("COMMIT")

        return await self._run(read)

    async def feed_position(self, user: str) -> int:
        def read() -> int:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                return self._user_position(conn, user)
            finally:
                conn.execute("COMMIT")

        return await self._run(read)

    async def compact_changes(
        self, retention_seconds: float | None, now: float | None = None
    ) -> int:
        cutoff = None if retention_seconds is None else (
            (time.time() if now is None else now) - retention_seconds
        )

        def tx(conn: sqlite3.Connection) -> int:
            dropped = 0
            if cutoff is not None:
                conn.execute(
                    "INSERT INTO feed_horizon (user, seq) "
                    "SELECT user, max(seq) FROM changes WHERE created < ? GROUP BY user "
                    "ON CONFLICT (user) DO UPDATE SET seq = max(seq, excluded.seq)",
                    (cutoff,),
                )
                dropped += conn.execute(
                    "DELETE FROM changes WHERE created < ?", (cutoff,)
                ).rowcount
            # A later put or delete of the blob supersedes all before it; a later flags
            # change supersedes earlier flags changes. Lossless: no horizon moves.
            dropped += conn.execute("DELETE FROM changes WHERE " + _SUPERSEDED).rowcount
            return dropped

        def anything() -> bool:
            conn = self._scan.db()
            conn.execute("BEGIN")
            try:
                if cutoff is not None and conn.execute(
                    "SELECT 1 FROM changes WHERE created < ? LIMIT 1", (cutoff,)
                ).fetchone():
                    return True
                return conn.execute(
                    "SELECT 1 FROM changes WHERE " + _SUPERSEDED + " LIMIT 1"
                ).fetchone() is not None
            finally:
                conn.execute("COMMIT")

        # Look first, on the scan connection and under no lock: most sweeps find nothing
        # to drop, and waiting for the write lock (a busy writer may hold it a while)
        # holds the index's one thread, and every request behind it.
        if not await self._scan.run(anything):
            return 0
        return await self._run(self._write, tx)

    async def changed_since(self, seq: int) -> tuple[int, set[str]]:
        def read() -> tuple[int, set[str]]:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                users = {
                    r[0] for r in conn.execute(
                        "SELECT DISTINCT user FROM changes WHERE seq > ?", (seq,)
                    )
                }
                return self._last_seq(conn), users
            finally:
                conn.execute("COMMIT")

        return await self._run(read)

    async def follow_commits(
        self, wake: Callable[[set[str] | None], None], active: Callable[[], bool]
    ) -> None:
        # Workers share the file but not a channel: each polls, cheaply and only while
        # a request of its own waits. A wake-up for our own commits too is harmless.
        seen, _ = await self.changed_since(1 << 62)
        while True:
            await asyncio.sleep(COMMIT_POLL_INTERVAL if active() else IDLE_CHECK_INTERVAL)
            if not active():
                continue
            last, users = await self.changed_since(seen)
            if last != seen:
                seen = last
                if users:
                    wake(users)


def _row_to_change(row: tuple[Any, ...]) -> Change:
    seq, namespace, blob_id, op, size, tag, flags, meta = row
    return Change(
        seq, namespace, blob_id, op, size, None if tag is None else bytes(tag),
        None if flags is None else mask_to_flags(flags), meta,
    )
