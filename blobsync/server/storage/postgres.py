"""PostgreSQL metadata index, for several server processes sharing one database.

Everything one process used to decide alone is decided by the database here: id uniqueness
by the primary key, the quota by one conditional UPDATE of the user's usage row (its row
lock serializes that user's writers across processes, and READ COMMITTED re-checks the
condition against the committed total), stored order by a sequence, and ``expect`` by one
conditional UPDATE of the flags.

The schema is versioned: ``MIGRATIONS`` lists SQL steps applied in order, each recorded in
``schema_version``. ``migrate`` runs them under a transaction-scoped advisory lock, so any
number of processes starting at once migrate exactly once and the rest find it done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from urllib.parse import urlsplit

import asyncpg

from .base import (
    FLAGS,
    BlobExists,
    BlobInfo,
    BlobNotFound,
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

log = logging.getLogger(__name__)

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
]

SCHEMA_VERSION = len(MIGRATIONS)

# What a lost, refused or exhausted database connection raises; everything else is a bug
# or a constraint and passes through unchanged.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, and TimeoutError from pool.acquire(timeout=...)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # pool closed, connection closed under us
)

_COLUMNS = "user_id, namespace, blob_id, size, tag, flags, seq, location"


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


def list_query(filter_flag: str | None, order: Order) -> str:
    """SELECT of blob ids; parameters: user, namespace, limit (NULL for no limit)."""
    order_by = {
        Order.NONE: "",
        Order.OLDEST_FIRST: " ORDER BY seq",
        Order.NEWEST_FIRST: " ORDER BY seq DESC",
    }[order]
    return (
        "SELECT blob_id FROM blobs WHERE user_id = $1 AND namespace = $2"
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
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
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
                    "INSERT INTO blobs (user_id, namespace, blob_id, size, tag, flags, location)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
                    user,
                    namespace,
                    blob.blob_id,
                    blob.size,
                    bytes(blob.tag),
                    _flag_list(blob.flags),
                    blob.location,
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
        except asyncpg.UniqueViolationError:
            raise BlobExists(f"blob {blob.blob_id} exists") from None
        assert row is not None
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
        ids = [b.blob_id for b in blobs]
        async with self._connection() as conn, conn.transaction():
            # Stored order is the order of ``blobs``; the inserts below go in id order.
            seqs = sorted(
                await conn.fetchval(
                    "SELECT array_agg(nextval('blob_seq')) FROM generate_series(1, $1)",
                    len(blobs),
                )
            )
            # Inserting in id order means two runs that share ids wait for each other in
            # the same order, never in a cycle. DO NOTHING skips an id indexed already
            # (or twice in the run: the first wins) and RETURNING names those that went in.
            inserted = await conn.fetch(
                "INSERT INTO blobs (user_id, namespace, blob_id, size, tag, flags, location,"
                " seq) SELECT $1, $2, r.blob_id, r.size, r.tag,"
                " string_to_array(r.flags, ','), r.location, r.seq"
                " FROM unnest($3::text[], $4::bigint[], $5::bytea[], $6::text[], $7::text[],"
                " $8::bigint[]) AS r(blob_id, size, tag, flags, location, seq)"
                " ORDER BY r.blob_id, r.seq"
                f" ON CONFLICT (user_id, namespace, blob_id) DO NOTHING RETURNING {_COLUMNS}",
                user,
                namespace,
                ids,
                [b.size for b in blobs],
                [bytes(b.tag) for b in blobs],
                [",".join(_flag_list(b.flags)) for b in blobs],
                [b.location for b in blobs],
                seqs,
            )
            by_seq = {rec["seq"]: _info(rec) for rec in inserted}
            # Locked after the blob rows, as insert_blob does, and held to the commit: this
            # user's other writers, in any process, wait here, so the sum below is exact.
            await conn.execute(
                "INSERT INTO usage (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user
            )
            used = await conn.fetchval(
                "SELECT bytes FROM usage WHERE user_id = $1 FOR UPDATE", user
            )
            out: list[BlobInfo | BlobExists | QuotaExceeded] = []
            added = 0
            for blob, seq in zip(blobs, seqs, strict=True):
                blob_id, size = blob.blob_id, blob.size
                info = by_seq.pop(seq, None)
                if info is None:
                    out.append(BlobExists(f"blob {blob_id} exists"))
                elif quota > 0 and used + added + size > quota:
                    out.append(QuotaExceeded(f"quota of {quota} bytes exceeded"))
                    by_seq[seq] = info  # with the rest of the run: taken out again below
                    break
                else:
                    added += size
                    out.append(info)
            if by_seq:
                await conn.execute(
                    "DELETE FROM blobs WHERE user_id = $1 AND namespace = $2"
                    " AND seq = ANY($3::bigint[])",
                    user,
                    namespace,
                    list(by_seq),
                )
            kept = [o.blob_id for o in out if isinstance(o, BlobInfo)]
            if kept:
                await conn.execute(
                    "DELETE FROM tombstones WHERE user_id = $1 AND namespace = $2"
                    " AND blob_id = ANY($3::text[])",
                    user,
                    namespace,
                    kept,
                )
                await conn.execute(
                    "UPDATE usage SET bytes = bytes + $2 WHERE user_id = $1", user, added
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
        return _info(row)

    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        async with self._connection() as conn:
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

    # the change feed: being written (issue 12) --------------------------------------------
    async def read_changes(self, user, since, limit, namespace=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def feed_position(self, user):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def compact_changes(self, retention_seconds, now=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def changed_since(self, seq):  # type: ignore[no-untyped-def]
        raise NotImplementedError
