"""PostgreSQL metadata index, for several server processes sharing one database.

Everything one process used to decide alone is decided by the database here: id uniqueness
by the primary key, the quota by one conditional UPDATE of the user's usage row (its row
lock serializes that user's writers across processes, and READ COMMITTED re-checks the
condition against the committed total), stored order by a sequence, and ``expect`` by one
conditional UPDATE of the flags.

The schema is versioned: ``MIGRATIONS`` lists SQL steps applied in order, each recorded in
``schema_version``. ``migrate`` runs them under a transaction-scoped advisory lock, so any
number of processes starting at once migrate exactly once and the rest find it done.

The change feed (SPEC 8, schema step 2): every write appends its changes in its own
transaction, as its last step, under the user's feed lock (an advisory lock, held to the
commit), which makes each user's changes take their seqs in commit order: cursors never
skip, whichever processes commit (the argument is at ``_LOCKED``). The same statement
notifies ``CHANGES_CHANNEL`` with the user; ``follow_commits`` LISTENs on a connection of
its own (``pglisten.py``) and wakes this process's waiters. Feed reads are one statement
each, so one snapshot. docs/storage.md has the tables and the reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import asyncpg

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
from .pglisten import listen

log = logging.getLogger(__name__)

# PostgreSQL plans a table's queries from statistics that autovacuum refreshes at most once a
# naptime (a minute by default). Until then a freshly filled blobs table is planned as empty,
# and the per-run lookup of a stream download scans a user's rows by seq instead of probing
# the primary key: 3.5-46 ms per run against 0.2 ms (docs/performance.md). So the index
# analyses the table itself once this many rows went in since the last time...
ANALYZE_AFTER_ROWS = 1000
# ...and that many rows are at least this share of those it held then (a large table's
# statistics stay good for a while; re-analysing it often would be wasted work).
ANALYZE_GROWTH = 0.2

# Any fixed 64-bit number works, as long as nothing else in the database uses it for an
# advisory lock; this one spells "blobsync" in ASCII.
MIGRATION_LOCK_KEY = 0x626C6F6273796E63

# One entry per schema version; never edit a released step, append a new one.
MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE users (
        uuid text PRIMARY KEY,
        token_hash text NOT NULL
    );
    CREATE TABLE services (
        name text PRIMARY KEY,
        token_hash text NOT NULL
    );
    CREATE SEQUENCE blob_seq;
    CREATE TABLE blobs (
        user_id text NOT NULL,
        namespace text NOT NULL,
        blob_id text NOT NULL,
        size bigint NOT NULL CHECK (size >= 0),
        tag bytea NOT NULL,
        flags text[] NOT NULL DEFAULT '{}',
        seq bigint NOT NULL DEFAULT nextval('blob_seq'),
        location text NOT NULL,
        PRIMARY KEY (user_id, namespace, blob_id)
    );
    -- Plain listing and counting, in stored order either way.
    CREATE INDEX blobs_by_seq ON blobs (user_id, namespace, seq);
    -- Listing by flag (the incoming box asks for PENDING, oldest first): one partial index
    -- per flag, whose predicate the queries repeat literally so the planner can use it.
    CREATE INDEX blobs_pending ON blobs (user_id, namespace, seq)
        WHERE flags @> '{PENDING}'::text[];
    CREATE INDEX blobs_processing ON blobs (user_id, namespace, seq)
        WHERE flags @> '{PROCESSING}'::text[];
    CREATE INDEX blobs_processed ON blobs (user_id, namespace, seq)
        WHERE flags @> '{PROCESSED}'::text[];
    CREATE INDEX blobs_failed ON blobs (user_id, namespace, seq)
        WHERE flags @> '{FAILED}'::text[];
    CREATE SEQUENCE tombstone_seq;
    CREATE TABLE tombstones (
        user_id text NOT NULL,
        namespace text NOT NULL,
        blob_id text NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('tombstone_seq'),
        PRIMARY KEY (user_id, namespace, blob_id)
    );
    CREATE INDEX tombstones_by_seq ON tombstones (user_id, namespace, seq);
    CREATE TABLE usage (
        user_id text PRIMARY KEY,
        bytes bigint NOT NULL DEFAULT 0
    );
    """,
    # 2: the change feed (SPEC 8). Each write appends its changes in its own transaction
    # (``_APPEND_ONE``, ``_APPEND_PUTS``), under the user's feed lock: see the module doc.
    """
    CREATE SEQUENCE change_seq;
    CREATE TABLE changes (
        seq bigint NOT NULL DEFAULT nextval('change_seq'),
        user_id text NOT NULL,
        namespace text NOT NULL,
        blob_id text NOT NULL,
        op text NOT NULL CHECK (op IN ('put', 'delete', 'flags')),
        size bigint,
        tag bytea,
        flags text[],
        -- clock_timestamp, taken under the feed lock: per user, time order is seq order,
        -- so retention drops a prefix of each user's feed.
        created timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    -- Reading a user's feed, and the user's newest change. The only index: each one costs
    -- every write (a second, by blob, made a stream upload's index work 8% slower), and
    -- compaction, which would be its only reader, reads the whole table anyway.
    CREATE INDEX changes_by_user ON changes (user_id, seq);
    -- Per user, the newest seq that retention dropped: older cursors get 410.
    CREATE TABLE feed_horizon (
        user_id text PRIMARY KEY,
        seq bigint NOT NULL
    );
    -- The feed id, random, made once with the schema: cursors of another database are 410.
    CREATE TABLE feed (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    INSERT INTO feed VALUES ('id', substr(md5(gen_random_uuid()::text), 1, 16));
    """,
    # 3: small payloads inline (``pgpayloads.PostgresPayloads``, the inline tier of
    # PostgreSQL + S3). Sealed payloads are ciphertext: EXTERNAL keeps them out of line
    # (TOAST) without trying to compress what cannot shrink, and lets a ranged read fetch
    # only the chunks it needs. ``mtime`` is the writer's clock at the write's start, for
    # the sweep's grace.
    """
    CREATE TABLE payloads (
        location text PRIMARY KEY,
        data bytea NOT NULL,
        mtime double precision NOT NULL
    );
    ALTER TABLE payloads ALTER COLUMN data SET STORAGE EXTERNAL;
    """,
    # 4: the sealed meta of SPEC 11, opaque text, with the blob and with its put change (a
    # change keeps the meta its blob had). A nullable column without a default: no table
    # rewrite, existing rows read NULL.
    """
    ALTER TABLE blobs ADD COLUMN meta text;
    ALTER TABLE changes ADD COLUMN meta text;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# The change feed. Each user's writers take this advisory lock (two-key form: its key space
# is apart from MIGRATION_LOCK_KEY's) on (FEED_LOCK_CLASS, hashtext(user)) as the LAST lock
# of their transaction, then draw the change's seq, and hold it to the commit.
FEED_LOCK_CLASS = 0x62736663  # "bsfc"
# Compaction takes this one alone, remove_user shared: the two never delete the same rows
# in opposite orders (a deadlock), and two compactions never race.
COMPACTION_LOCK_KEY = 0x626C6F62636D7063  # "blobcmpc"
# Every transaction that appends a change notifies this channel with the user; PostgreSQL
# delivers it to the listeners at commit, and drops it on rollback.
CHANGES_CHANNEL = "blobsync_changes"
# Positions are bigints: a cursor past this cannot name anything this index gave out.
_SEQ_MAX = (1 << 63) - 1

# Why cursors never skip (SPEC 8). A change's seq comes from the sequence in the INSERT,
# evaluated per row after ``locked`` has produced its row, i.e. with the user's feed lock
# held; the lock goes only after the commit is visible (PostgreSQL releases locks after it
# marks the transaction committed). So the user's changes take their seqs in commit order:
# when a snapshot sees the user's newest change N, every seq below N of that user is
# committed (or rolled back) and every later one will be above N. A position is never
# handed out past a change that commits later, in any process.
#
# Why no deadlock: the feed lock is each transaction's last lock. Before it, a write has
# taken its blob rows, tombstone rows and the usage row (the order the rest of this module
# keeps); after it, it only inserts into ``changes`` (no unique key: nothing to wait on)
# and commits. A transaction holding a user's feed lock therefore waits for nobody, and no
# cycle can pass through it. The lock and the row locks must not share one statement whose
# order PostgreSQL may choose, except where the row locks are already held.
_LOCKED = (
    f"locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({FEED_LOCK_CLASS}, hashtext($1::text))),"
    f" told AS MATERIALIZED (SELECT pg_notify('{CHANGES_CHANNEL}', $1::text))"
)
# One change: user, namespace, blob id, op, size, tag, flags, meta.
_APPEND_ONE = (
    f"WITH {_LOCKED} INSERT INTO changes"
    " (user_id, namespace, blob_id, op, size, tag, flags, meta)"
    " SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bytea, $7::text[],"
    " $8::text FROM locked, told"
)
# A run's puts in one statement, with the rest of the run's bookkeeping: the usage added
# (its row is locked already) and the tombstones of its ids removed (rows nobody else can
# be holding while waiting on us: the ids were free when this transaction inserted them).
# Parameters: user, namespace, bytes added, then blob ids, sizes, tags, comma-joined flags,
# metas (NULL for a run without any: unnest pads a NULL array with NULLs).
_APPEND_PUTS = (
    "WITH bump AS (UPDATE usage SET bytes = bytes + $3::bigint WHERE user_id = $1::text),"
    " unmarked AS (DELETE FROM tombstones WHERE user_id = $1::text AND namespace = $2::text"
    " AND blob_id = ANY($4::text[])),"
    f" {_LOCKED}"
    " INSERT INTO changes (user_id, namespace, blob_id, op, size, tag, flags, meta)"
    " SELECT $1::text, $2::text, r.blob_id, 'put', r.size, r.tag, string_to_array(r.flags, ','),"
    " r.meta FROM locked, told,"
    " unnest($4::text[], $5::bigint[], $6::bytea[], $7::text[], $8::text[]) WITH ORDINALITY"
    " AS r(blob_id, size, tag, flags, meta, n)"
    " ORDER BY r.n"
)
# A run without a quota, whole, in ONE statement run outside any explicit transaction: its
# implicit transaction commits inside the server at the end of the statement, so the user's
# usage row and feed lock are never held across a round trip to this process. (With BEGIN,
# a usage read, the append and COMMIT, they were held across three, and each round trip
# waits its turn on a busy event loop: all of one user's concurrent batches queued behind
# that, p99 854 ms in the load of docs/performance.md.) The locks come in the module's
# order all the same, each step feeding on the one before: ``ins`` takes the blob rows,
# ``bump`` sums ``ins`` whole before its one row is upserted (the usage row lock), ``locked``
# reads ``bump``'s row before taking the feed lock, and ``appended`` draws the seqs from rows
# joined with ``locked``, in run order (``ins.seq``). ``unmarked`` is _APPEND_PUTS's.
# Nothing inserted: ``bump`` yields no row, so no lock, no change, no notification.
# Parameters: user, namespace, then blob ids, sizes, tags, comma-joined flags, locations,
# metas (NULL for a run without any, as in _APPEND_PUTS).
INSERT_RUN_UNLIMITED = (
    "WITH run AS MATERIALIZED (SELECT r.*, nextval('blob_seq') AS seq"
    " FROM unnest($3::text[], $4::bigint[], $5::bytea[], $6::text[], $7::text[], $8::text[])"
    " WITH ORDINALITY AS r(blob_id, size, tag, flags, location, meta, n)),"
    " ins AS (INSERT INTO blobs"
    " (user_id, namespace, blob_id, size, tag, flags, location, seq, meta)"
    " SELECT $1::text, $2::text, r.blob_id, r.size, r.tag, string_to_array(r.flags, ','),"
    " r.location, r.seq, r.meta FROM run AS r ORDER BY r.blob_id, r.seq"
    " ON CONFLICT (user_id, namespace, blob_id) DO NOTHING RETURNING {columns}),"
    " bump AS (INSERT INTO usage (user_id, bytes) SELECT $1::text, sum(size) FROM ins"
    " HAVING count(*) > 0"
    " ON CONFLICT (user_id) DO UPDATE SET bytes = usage.bytes + excluded.bytes RETURNING 1),"
    " unmarked AS (DELETE FROM tombstones WHERE user_id = $1::text AND namespace = $2::text"
    " AND blob_id IN (SELECT blob_id FROM ins)),"
    " locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({feed_class}, hashtext($1::text))"
    " FROM bump),"
    " told AS MATERIALIZED (SELECT pg_notify('{channel}', $1::text) FROM locked),"
    " appended AS (INSERT INTO changes"
    " (user_id, namespace, blob_id, op, size, tag, flags, meta)"
    " SELECT $1::text, $2::text, i.blob_id, 'put', i.size, i.tag, i.flags, i.meta"
    " FROM locked, told, ins AS i ORDER BY i.seq)"
    " SELECT blob_id, seq FROM ins"
)
_LAST_SEQ = "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM change_seq)"
_HORIZON = "coalesce((SELECT seq FROM feed_horizon WHERE user_id = $1), 0)"
_NEWEST = "coalesce((SELECT max(seq) FROM changes WHERE user_id = $1), 0)"
# One statement, so one snapshot: the page, the user's newest change and the horizon agree.
# Parameters: user, since (NULL: from the horizon), namespace (NULL: all), limit + 1.
READ_CHANGES_QUERY = (
    "SELECT b.horizon, b.last, b.newest,"
    " c.seq, c.namespace, c.blob_id, c.op, c.size, c.tag, c.flags, c.meta"
    f" FROM (SELECT {_HORIZON} AS horizon, {_LAST_SEQ} AS last, {_NEWEST} AS newest) AS b"
    " LEFT JOIN LATERAL (SELECT seq, namespace, blob_id, op, size, tag, flags, meta"
    " FROM changes"
    " WHERE user_id = $1 AND seq > coalesce($2::bigint, b.horizon)"
    " AND ($3::text IS NULL OR namespace = $3::text)"
    " AND ($2::bigint IS NULL OR $2::bigint BETWEEN b.horizon AND b.last)"
    " ORDER BY seq LIMIT $4) AS c ON true"
    " ORDER BY c.seq"
)
FEED_POSITION_QUERY = f"SELECT greatest({_NEWEST}, {_HORIZON})"
# Retention: per user, drop every change up to the newest one older than the cut-off, and
# move the horizon there. Parameters: retention seconds, now (epoch seconds; NULL: the
# database's clock, which also dated the changes).
_RETAIN = (
    "WITH cut AS (SELECT user_id, max(seq) AS seq FROM changes"
    " WHERE created < coalesce(to_timestamp($2::float8), clock_timestamp())"
    " - make_interval(secs => $1::float8) GROUP BY user_id),"
    " moved AS (INSERT INTO feed_horizon (user_id, seq) SELECT user_id, seq FROM cut"
    " ON CONFLICT (user_id) DO UPDATE SET seq = greatest(feed_horizon.seq, excluded.seq)),"
    " gone AS (DELETE FROM changes AS c USING cut"
    " WHERE c.user_id = cut.user_id AND c.seq <= cut.seq RETURNING 1)"
    " SELECT count(*) FROM gone"
)
# A later put or delete of the blob supersedes all before it; a later flags change
# supersedes earlier flags changes. Lossless: no horizon moves. One pass over the table
# sorted by blob, newest first: ``replaced`` is whether a put or delete came later,
# ``later`` how many changes came later.
_SUPERSEDED = (
    "WITH doomed AS (SELECT user_id, seq FROM (SELECT user_id, seq, op,"
    " bool_or(op <> 'flags') OVER after AS replaced, count(*) OVER after AS later"
    " FROM changes WINDOW after AS (PARTITION BY user_id, namespace, blob_id"
    " ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS w"
    " WHERE replaced OR (op = 'flags' AND later > 0)),"
    " gone AS (DELETE FROM changes AS c USING doomed AS d"
    " WHERE c.user_id = d.user_id AND c.seq = d.seq RETURNING 1)"
    " SELECT count(*) FROM gone"
)

# What a lost, refused or exhausted database connection raises; everything else is a bug
# or a constraint and passes through unchanged.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, and TimeoutError from pool.acquire(timeout=...)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # pool closed, connection closed under us
)
_UNAVAILABLE = UNAVAILABLE

_COLUMNS = "user_id, namespace, blob_id, size, tag, flags, seq, location, meta"
_INSERT_RUN_UNLIMITED = INSERT_RUN_UNLIMITED.format(
    columns=_COLUMNS, feed_class=FEED_LOCK_CLASS, channel=CHANGES_CHANNEL
)


class DatabaseUnavailable(StorageError):
    """PostgreSQL cannot be reached or refused the connection; the request may be retried."""

    status_hint = 503


class SchemaTooNew(StorageError):
    """The database was migrated by a newer blobsync; running older code on it is unsafe."""


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for logs and error messages."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"
    except ValueError:
        return "postgresql://(unparsable DSN)"


async def schema_version(conn: asyncpg.Connection) -> int:
    """The version the database is at; 0 before the first migration."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the schema to ``len(migrations)`` in one transaction; return that version.

    The advisory lock is taken before anything is read, so a second process waits here until
    the first commits and then sees the new version; it is released with the transaction.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        if current > len(migrations):
            raise SchemaTooNew(
                f"database schema is at version {current}, this blobsync knows only up to "
                f"{len(migrations)}: upgrade blobsync"
            )
        for version in range(current + 1, len(migrations) + 1):
            await conn.execute(migrations[version - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            log.info("migrated metadata schema to version %d", version)
    return len(migrations)


def _flag_clause(flag: str | None) -> str:
    """The WHERE addition for a flag filter, spelled like the partial indexes' predicates.

    The flag is inlined, not a parameter, so that the planner sees the same constant as the
    index predicate; only the four known flags ever reach the SQL text.
    """
    if flag is None:
        return ""
    if flag not in FLAGS:
        return " AND false"  # no blob can carry an unknown flag
    return f" AND flags @> '{{{flag}}}'::text[]"


def list_query(filter_flag: str | None, order: Order, columns: str = "blob_id") -> str:
    """SELECT of blob ids (or ``columns``); parameters: user, namespace, limit (NULL for
    no limit)."""
    order_by = {
        Order.NONE: "",
        Order.OLDEST_FIRST: " ORDER BY seq",
        Order.NEWEST_FIRST: " ORDER BY seq DESC",
    }[order]
    return (
        f"SELECT {columns} FROM blobs WHERE user_id = $1 AND namespace = $2"
        f"{_flag_clause(filter_flag)}{order_by} LIMIT $3"
    )


def count_query(filter_flag: str | None) -> str:
    """SELECT count(*); parameters: user, namespace."""
    return (
        "SELECT count(*) FROM blobs WHERE user_id = $1 AND namespace = $2"
        f"{_flag_clause(filter_flag)}"
    )


LIST_DELETED_QUERY = (
    "SELECT blob_id FROM tombstones WHERE user_id = $1 AND namespace = $2 ORDER BY seq"
)


def _info(row: asyncpg.Record) -> BlobInfo:
    return BlobInfo(
        user=row["user_id"],
        namespace=row["namespace"],
        blob_id=row["blob_id"],
        size=row["size"],
        tag=bytes(row["tag"]),
        flags=frozenset(row["flags"]),
        seq=row["seq"],
        location=row["location"],
        meta=row["meta"],
    )


def _flag_list(flags: Iterable[str]) -> list[str]:
    return sorted(set(flags))


class PostgresIndex(MetadataIndex):
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        acquire_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._grown = 0  # rows inserted since the last ANALYZE this process ran
        self._rows_analysed = 0
        self._analysing: asyncio.Task[None] | None = None

    @property
    def dsn(self) -> str:
        """The database this index uses (with its password: never log it, see redact_dsn)."""
        return self._dsn

    # lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        where = redact_dsn(self._dsn)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size
            )
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
        except asyncpg.PostgresError as exc:  # wrong password, no such database, ...
            raise DatabaseUnavailable(f"PostgreSQL at {where} refused us: {exc}") from exc
        try:
            async with self._connection() as conn:
                try:
                    await migrate(conn)
                except _UNAVAILABLE:
                    raise  # _connection makes it a DatabaseUnavailable
                except asyncpg.PostgresError as exc:  # no CREATE privilege, most likely
                    raise StorageError(
                        f"cannot create or migrate the schema at {where}: {exc}"
                    ) from exc
                self.feed_id = await conn.fetchval("SELECT value FROM feed WHERE key = 'id'")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._analysing is not None:
            self._analysing.cancel()
            await asyncio.gather(self._analysing, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection failures become DatabaseUnavailable (503)."""
        if self._pool is None:
            raise DatabaseUnavailable("the metadata index is not open")
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            log.warning("PostgreSQL unavailable: %r", exc)
            raise DatabaseUnavailable(
                f"metadata database unavailable ({type(exc).__name__})"
            ) from exc

    # users and services -----------------------------------------------------------------
    async def add_user(self, uuid: str, token_hash: str) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute(
                    "INSERT INTO users (uuid, token_hash) VALUES ($1, $2)", uuid, token_hash
                )
        except asyncpg.UniqueViolationError:
            raise UserExists(f"user {uuid} exists") from None

    async def set_user_token(self, uuid: str, token_hash: str) -> None:
        async with self._connection() as conn:
            done = await conn.fetchval(
                "UPDATE users SET token_hash = $2 WHERE uuid = $1 RETURNING true",
                uuid,
                token_hash,
            )
        if not done:
            raise UserNotFound(f"no user {uuid}")

    async def remove_user(self, uuid: str) -> None:
        async with self._connection() as conn, conn.transaction():
            done = await conn.fetchval("DELETE FROM users WHERE uuid = $1 RETURNING true", uuid)
            if not done:
                raise UserNotFound(f"no user {uuid}")
            # Payloads of these rows become orphans that gc collects.
            await conn.execute("DELETE FROM blobs WHERE user_id = $1", uuid)
            await conn.execute("DELETE FROM tombstones WHERE user_id = $1", uuid)
            await conn.execute("DELETE FROM usage WHERE user_id = $1", uuid)
            # Not while a compaction runs: it deletes these rows too, in an order of its own.
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", COMPACTION_LOCK_KEY)
            await conn.execute("DELETE FROM feed_horizon WHERE user_id = $1", uuid)
            await conn.execute("DELETE FROM changes WHERE user_id = $1", uuid)

    async def get_user(self, uuid: str) -> Principal | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT uuid, token_hash FROM users WHERE uuid = $1", uuid)
        return None if row is None else Principal(row["uuid"], row["token_hash"])

    async def list_users(self) -> list[Principal]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT uuid, token_hash FROM users ORDER BY uuid")
        return [Principal(r["uuid"], r["token_hash"]) for r in rows]

    async def add_service(self, name: str, token_hash: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO services (name, token_hash) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash",
                name,
                token_hash,
            )

    async def get_service(self, name: str) -> Principal | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT name, token_hash FROM services WHERE name = $1", name)
        return None if row is None else Principal(row["name"], row["token_hash"])

    async def list_services(self) -> list[Principal]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT name, token_hash FROM services ORDER BY name")
        return [Principal(r["name"], r["token_hash"]) for r in rows]

    async def remove_service(self, name: str) -> None:
        async with self._connection() as conn:
            done = await conn.fetchval("DELETE FROM services WHERE name = $1 RETURNING true", name)
        if not done:
            raise UserNotFound(f"no service {name}")

    # blobs ------------------------------------------------------------------------------
    async def insert_blob(
        self,
        user: str,
        namespace: str,
        blob: NewBlob,
        quota: int = 0,
    ) -> BlobInfo:
        try:
            async with self._connection() as conn, conn.transaction():
                # The row first: a duplicate fails here, before the hot usage row is locked,
                # and BlobExists wins over QuotaExceeded as the contract orders them.
                row = await conn.fetchrow(
                    "INSERT INTO blobs"
                    " (user_id, namespace, blob_id, size, tag, flags, location, meta)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
                    user,
                    namespace,
                    blob.blob_id,
                    blob.size,
                    bytes(blob.tag),
                    _flag_list(blob.flags),
                    blob.location,
                    blob.meta,
                )
                await conn.execute(
                    "DELETE FROM tombstones WHERE user_id = $1 AND namespace = $2 AND blob_id = $3",
                    user,
                    namespace,
                    blob.blob_id,
                )
                await conn.execute(
                    "INSERT INTO usage (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user
                )
                # Last, so the row lock that serializes this user's writers is held only
                # until the commit right after it.
                accepted = await conn.fetchval(
                    "UPDATE usage SET bytes = bytes + $2 WHERE user_id = $1"
                    " AND ($3::bigint <= 0 OR bytes + $2 <= $3::bigint) RETURNING true",
                    user,
                    blob.size,
                    quota,
                )
                if not accepted:
                    raise QuotaExceeded(f"quota of {quota} bytes exceeded")
                await conn.execute(
                    _APPEND_ONE, user, namespace, blob.blob_id, "put", blob.size,
                    bytes(blob.tag), _flag_list(blob.flags), blob.meta,
                )
        except asyncpg.UniqueViolationError:
            raise BlobExists(f"blob {blob.blob_id} exists") from None
        assert row is not None
        self._grew(1)
        return _info(row)

    async def insert_blobs(
        self,
        user: str,
        namespace: str,
        blobs: list[NewBlob],
        quota: int = 0,
    ) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        """``MetadataIndex.insert_blobs`` in one transaction, exact across processes."""
        if not blobs:
            return []
        out = await self._insert_blobs(user, namespace, blobs, quota)
        self._grew(sum(1 for o in out if isinstance(o, BlobInfo)))
        return out

    def _grew(self, rows: int) -> None:
        """Count rows that went in; analyse the tables in the background once they have
        grown enough since the last analysis (ANALYZE_AFTER_ROWS, ANALYZE_GROWTH)."""
        self._grown += rows
        due = max(ANALYZE_AFTER_ROWS, ANALYZE_GROWTH * self._rows_analysed)
        if self._grown < due or self._analysing is not None or self._pool is None:
            return
        self._grown = 0
        self._analysing = asyncio.get_running_loop().create_task(self._analyse())

    async def _analyse(self) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute("ANALYZE blobs, changes")
                self._rows_analysed = int(
                    await conn.fetchval(
                        "SELECT greatest(reltuples, 0)::bigint FROM pg_class"
                        " WHERE oid = 'blobs'::regclass"
                    )
                )
        except Exception as exc:  # statistics are an optimisation: never fail a write for them
            log.debug("ANALYZE of the index tables failed: %r", exc)
        finally:
            self._analysing = None

    async def _insert_blobs(
        self,
        user: str,
        namespace: str,
        blobs: list[NewBlob],
        quota: int,
    ) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        if quota <= 0:
            return await self._insert_run_unlimited(user, namespace, blobs)
        async with self._connection() as conn, conn.transaction():
            # Stored order is the order of ``blobs``: the materialized ``run`` draws the seqs
            # row by row in that order. The inserts go in id order, so two runs that share
            # ids wait for each other in the same order, never in a cycle. DO NOTHING skips
            # an id indexed already (or twice in the run: the first, with the lower seq,
            # wins) and RETURNING names those that went in.
            inserted = await conn.fetch(
                "WITH run AS MATERIALIZED (SELECT r.*, nextval('blob_seq') AS seq"
                " FROM unnest($3::text[], $4::bigint[], $5::bytea[], $6::text[], $7::text[],"
                " $8::text[]) WITH ORDINALITY AS r(blob_id, size, tag, flags, location, meta, n))"
                " INSERT INTO blobs (user_id, namespace, blob_id, size, tag, flags, location,"
                " seq, meta) SELECT $1, $2, r.blob_id, r.size, r.tag,"
                " string_to_array(r.flags, ','), r.location, r.seq, r.meta FROM run AS r"
                " ORDER BY r.blob_id, r.seq"
                f" ON CONFLICT (user_id, namespace, blob_id) DO NOTHING RETURNING {_COLUMNS}",
                user,
                namespace,
                [b.blob_id for b in blobs],
                [b.size for b in blobs],
                [bytes(b.tag) for b in blobs],
                [",".join(_flag_list(b.flags)) for b in blobs],
                [b.location for b in blobs],
                _metas(blobs),
            )
            by_id = {rec["blob_id"]: _info(rec) for rec in inserted}
            # Locked after the blob rows, as insert_blob does, and held to the commit: this
            # user's other writers, in any process, wait here, so the sum below is exact.
            # DO UPDATE locks the row whether this inserts it or finds it, and reads its
            # newest committed version.
            used = await conn.fetchval(
                "INSERT INTO usage (user_id) VALUES ($1) ON CONFLICT (user_id)"
                " DO UPDATE SET bytes = usage.bytes RETURNING bytes",
                user,
            )
            out: list[BlobInfo | BlobExists | QuotaExceeded] = []
            added = 0
            for blob in blobs:
                blob_id, size = blob.blob_id, blob.size
                info = by_id.pop(blob_id, None)  # a second time in the run: BlobExists
                if info is None:
                    out.append(BlobExists(f"blob {blob_id} exists"))
                elif quota > 0 and used + added + size > quota:
                    out.append(QuotaExceeded(f"quota of {quota} bytes exceeded"))
                    by_id[blob_id] = info  # with the rest of the run: taken out again below
                    break
                else:
                    added += size
                    out.append(info)
            if by_id:
                await conn.execute(
                    "DELETE FROM blobs WHERE user_id = $1 AND namespace = $2"
                    " AND seq = ANY($3::bigint[])",
                    user,
                    namespace,
                    [info.seq for info in by_id.values()],
                )
            kept = [o for o in out if isinstance(o, BlobInfo)]
            if kept:
                # Tombstones, usage and the run's changes in one statement: the feed costs
                # the stream path no round trip, whatever the run's length.
                await conn.execute(
                    _APPEND_PUTS,
                    user,
                    namespace,
                    added,
                    [o.blob_id for o in kept],
                    [o.size for o in kept],
                    [o.tag for o in kept],
                    [",".join(_flag_list(o.flags)) for o in kept],
                    _metas(kept),
                )
        return out

    async def _insert_run_unlimited(
        self, user: str, namespace: str, blobs: list[NewBlob]
    ) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        """``insert_blobs`` without a quota: one statement, one round trip (at the query)."""
        async with self._connection() as conn:
            inserted = await conn.fetch(
                _INSERT_RUN_UNLIMITED,
                user,
                namespace,
                [b.blob_id for b in blobs],
                [b.size for b in blobs],
                [bytes(b.tag) for b in blobs],
                [",".join(_flag_list(b.flags)) for b in blobs],
                [b.location for b in blobs],
                _metas(blobs),
            )
        # Only the ids and seqs come back: the rest of each row is in hand, and decoding
        # eight columns (a text[] among them) per row cost the event loop more than that.
        seqs = dict(inserted)
        out: list[BlobInfo | BlobExists | QuotaExceeded] = []
        for blob in blobs:
            seq = seqs.pop(blob.blob_id, None)  # a second time in the run: BlobExists
            out.append(
                BlobExists(f"blob {blob.blob_id} exists") if seq is None
                else BlobInfo(user, namespace, blob.blob_id, blob.size, bytes(blob.tag),
                              frozenset(blob.flags), seq, blob.location, blob.meta)
            )
        return out

    async def get_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM blobs"
                " WHERE user_id = $1 AND namespace = $2 AND blob_id = $3",
                user,
                namespace,
                blob_id,
            )
        return None if row is None else _info(row)

    async def delete_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo:
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM blobs WHERE user_id = $1 AND namespace = $2 AND blob_id = $3"
                f" RETURNING {_COLUMNS}",
                user,
                namespace,
                blob_id,
            )
            if row is None:
                raise BlobNotFound(f"no blob {blob_id}")
            # A second deletion of a re-created id is the newest deletion.
            await conn.execute(
                "INSERT INTO tombstones (user_id, namespace, blob_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id, namespace, blob_id)"
                " DO UPDATE SET seq = nextval('tombstone_seq')",
                user,
                namespace,
                blob_id,
            )
            await conn.execute(
                "UPDATE usage SET bytes = bytes - $2 WHERE user_id = $1", user, row["size"]
            )
            await conn.execute(
                _APPEND_ONE, user, namespace, blob_id, "delete", None, None, None, None
            )
        return _info(row)

    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        async with self._connection() as conn, conn.transaction():
            # One statement: the check and the change see the same row version, and a
            # concurrent reservation waits on the row lock, then re-checks the condition.
            done = await conn.fetchval(
                "UPDATE blobs SET flags = $4"
                " WHERE user_id = $1 AND namespace = $2 AND blob_id = $3"
                " AND ($5::text IS NULL OR flags @> ARRAY[$5::text]) RETURNING true",
                user,
                namespace,
                blob_id,
                _flag_list(flags),
                expect,
            )
            if done:
                # In the UPDATE's transaction, after its row lock (the feed lock is last).
                await conn.execute(
                    _APPEND_ONE, user, namespace, blob_id, "flags", None, None,
                    _flag_list(flags), None,
                )
                return
            exists = await conn.fetchval(
                "SELECT true FROM blobs WHERE user_id = $1 AND namespace = $2 AND blob_id = $3",
                user,
                namespace,
                blob_id,
            )
        if not exists:
            raise BlobNotFound(f"no blob {blob_id}")
        raise PreconditionFailed(f"blob {blob_id} is not flagged {expect}")

    async def list_blobs(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[str]:
        if limit is not None and limit <= 0:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(list_query(filter_flag, order), user, namespace, limit)
        return [r["blob_id"] for r in rows]

    async def list_blobs_meta(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[tuple[str, int, str | None]]:
        if limit is not None and limit <= 0:
            return []
        query = list_query(filter_flag, order, "blob_id, size, meta")
        async with self._connection() as conn:
            rows = await conn.fetch(query, user, namespace, limit)
        return [(r["blob_id"], r["size"], r["meta"]) for r in rows]

    async def count_blobs(
        self, user: str, namespace: str, *, filter_flag: str | None = None
    ) -> int:
        async with self._connection() as conn:
            count = await conn.fetchval(count_query(filter_flag), user, namespace)
        return int(count)

    async def list_deleted(self, user: str, namespace: str) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(LIST_DELETED_QUERY, user, namespace)
        return [r["blob_id"] for r in rows]

    async def add_tombstone(self, user: str, namespace: str, blob_id: str) -> bool:
        async with self._connection() as conn:
            # One statement, so an indexed id never gets a tombstone from here.
            added = await conn.fetchval(
                "INSERT INTO tombstones (user_id, namespace, blob_id)"
                " SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM blobs"
                " WHERE user_id = $1 AND namespace = $2 AND blob_id = $3)"
                " ON CONFLICT (user_id, namespace, blob_id) DO NOTHING RETURNING true",
                user,
                namespace,
                blob_id,
            )
        return bool(added)

    async def get_blobs(self, user: str, namespace: str, blob_ids: list[str]) -> list[BlobInfo]:
        if not blob_ids:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM blobs"
                " WHERE user_id = $1 AND namespace = $2 AND blob_id = ANY($3::text[])",
                user,
                namespace,
                list(set(blob_ids)),
            )
        found = {r["blob_id"]: _info(r) for r in rows}
        return [found[bid] for bid in blob_ids if bid in found]

    async def usage(self, user: str) -> int:
        async with self._connection() as conn:
            used = await conn.fetchval("SELECT bytes FROM usage WHERE user_id = $1", user)
        return int(used or 0)

    async def all_locations(self) -> set[str]:
        async with self._connection() as conn, conn.transaction():
            # A cursor, so a large index streams to us instead of arriving as one result.
            return {r["location"] async for r in conn.cursor("SELECT location FROM blobs")}

    # the change feed ------------------------------------------------------------------
    async def read_changes(
        self, user: str, since: int | None, limit: int, namespace: str | None = None
    ) -> ChangePage:
        if since is not None and not 0 <= since <= _SEQ_MAX:
            raise CursorGone(f"cursor position {since} is outside the feed")
        async with self._connection() as conn:
            rows = await conn.fetch(READ_CHANGES_QUERY, user, since, namespace, limit + 1)
        head = rows[0]
        horizon, last = int(head["horizon"]), int(head["last"])
        if since is not None and not horizon <= since <= last:
            raise CursorGone(f"cursor position {since} is outside the feed ({horizon}..{last})")
        start = horizon if since is None else since
        found = [_change(r) for r in rows if r["seq"] is not None]
        changes = found[:limit]
        if len(found) > limit:
            return ChangePage(changes, changes[-1].seq, False)
        return ChangePage(changes, max(start, int(head["newest"])), True)

    async def feed_position(self, user: str) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval(FEED_POSITION_QUERY, user))

    async def compact_changes(
        self, retention_seconds: float | None, now: float | None = None
    ) -> int:
        dropped = 0
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", COMPACTION_LOCK_KEY)
            if retention_seconds is not None:
                dropped += await conn.fetchval(_RETAIN, float(retention_seconds), now)
            dropped += await conn.fetchval(_SUPERSEDED)
        return int(dropped)

    async def changed_since(self, seq: int) -> tuple[int, set[str]]:
        """As the interface says; a poller of it may miss a commit here, though: two users'
        changes commit in any order, so one may commit below a seq already seen. The
        server's processes follow each other through NOTIFY instead (``follow_commits``)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_LAST_SEQ} AS last,"
                " ARRAY(SELECT DISTINCT user_id FROM changes WHERE seq > $1) AS users",
                min(seq, _SEQ_MAX),
            )
        assert row is not None
        return int(row["last"]), set(row["users"])

    async def follow_commits(
        self, wake: Callable[[set[str] | None], None], active: Callable[[], bool]
    ) -> None:
        # LISTEN costs nothing while idle, so ``active`` is not needed to rest.
        await listen(self._dsn, CHANGES_CHANNEL, wake, redact_dsn(self._dsn))


def _change(row: asyncpg.Record) -> Change:
    tag, flags = row["tag"], row["flags"]
    return Change(
        seq=row["seq"],
        namespace=row["namespace"],
        blob_id=row["blob_id"],
        op=row["op"],
        size=row["size"],
        tag=None if tag is None else bytes(tag),
        flags=None if flags is None else frozenset(flags),
        meta=row["meta"],
    )


def _metas(blobs: Iterable[NewBlob | BlobInfo]) -> list[str | None] | None:
    """A run's metas as one array parameter, or NULL when none has one: the usual run
    then sends no array of NULLs (unnest pads a NULL array)."""
    metas = [b.meta for b in blobs]
    return metas if any(m is not None for m in metas) else None
